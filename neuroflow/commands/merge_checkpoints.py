"""`python -m neuroflow merge` for checkpoints made outside neuroflow, and `--from_mergekit`.

    python -m neuroflow merge --model.base BASE --model.experts '[E1, E2, ADAPTER]' \\
        --model.method neuroflow.merging.TIES --model.method.init_args.mask_rate 0.8 \\
        --evaluate false --output_dir OUT [--max_shard_size 5GB] [--dtype bfloat16] [--threads 2]
    python -m neuroflow merge --from_mergekit mergekit.yml --output_dir OUT

Both end in `neuroflow.checkpoints.merge_checkpoints`: header checks first, then a streamed merge
written shard by shard into a standard, model-carded folder.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from typing import Any

log = logging.getLogger(__name__)


def _command_line() -> str:
    return "python -m neuroflow " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def run_checkpoint_merge(
    model: Any,
    output_dir: str | None,
    evaluate: bool,
    has_data: bool,
    max_shard_size: str,
    dtype: str | None,
    threads: int | None,
    vocab: str,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Merge a MergeModule's external checkpoints disk to disk; returns the merge card.

    Args:
        model: a `MergeModule` in checkpoint mode (`model.external`).
        output_dir: the output folder (required).
        evaluate: whether scoring was asked for (it needs tasks with heads: refused with data).
        has_data: whether `data` (tasks) was given.
        max_shard_size: shard size limit ("5GB").
        dtype: output dtype of float weights, or None for the base's.
        threads: intra-op threads for the maths.
        vocab: "refuse" or "shared_rows" for resized vocabularies.
        config: the resolved config, recorded in the model card.
    """
    from neuroflow.checkpoints import merge_checkpoints

    if evaluate and has_data:
        raise ValueError("scoring checkpoints made outside neuroflow needs task heads, which they do not have: "
                         "pass --evaluate false to only write the merged model, or fine-tune the experts with "
                         "`python -m neuroflow fit` so that each has its head")
    if not output_dir:
        raise ValueError("--output_dir is required when merging checkpoints made outside neuroflow")
    if model.search:
        raise ValueError("model.search needs validation data and task heads; it is not available for "
                         "checkpoints made outside neuroflow")
    card = merge_checkpoints(model.base, model.experts_refs, model.method, output_dir, max_shard_size=max_shard_size,
                             dtype=dtype, threads=threads, vocab=vocab, command=_command_line(), config=config,
                             exclude=model.exclude)
    log.info("merged model written to %s", output_dir)
    return card


def from_mergekit_main(argv: list[str]) -> dict[str, Any]:
    """`python -m neuroflow merge --from_mergekit CONFIG --output_dir OUT [...]`.

    Args:
        argv: the arguments after `merge`.
    """
    from neuroflow.checkpoints import merge_checkpoints
    from neuroflow.checkpoints.mergekit import from_mergekit

    parser = argparse.ArgumentParser(
        prog="python -m neuroflow merge --from_mergekit",
        description="Run the neuroflow merge equivalent to a MergeKit YAML (linear, task_arithmetic, ties, "
                    "dare_ties, dare_linear), or say which of its keys cannot be honoured.")
    parser.add_argument("--from_mergekit", required=True, metavar="CONFIG", help="the MergeKit YAML")
    parser.add_argument("--output_dir", "--output-dir", required=True, help="the output folder")
    parser.add_argument("--max_shard_size", default="5GB", help="shard size limit, e.g. 5GB")
    parser.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"],
                        help="output dtype (default: the MergeKit config's, else the base's)")
    parser.add_argument("--threads", type=int, default=None, help="threads for the maths (default: all cores)")
    args = parser.parse_args(argv)
    plan = from_mergekit(args.from_mergekit)
    return merge_checkpoints(plan.base, plan.experts, plan.method, args.output_dir,
                             max_shard_size=args.max_shard_size, dtype=args.dtype or plan.dtype, threads=args.threads,
                             command=_command_line(), config={"mergekit": args.from_mergekit})
