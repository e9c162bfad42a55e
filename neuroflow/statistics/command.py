"""`python -m neuroflow stats`: compute the experts' statistics for RegMean / Fisher merging.

```bash
python -m neuroflow stats --experts runs/experts --data configs/data/text4.yaml \
    [--kinds regmean,fisher] [--max_batches 50] [--data.init_args.batch_size 16]
```

The data config is the one `fit`/`merge` take (a `MultiTaskDataModule` `class_path` + `init_args`);
its fields can be overridden LightningCLI-style (`--data.init_args.max_length 64`). The tokenizer
defaults to the experts' base model. Prints one line per file (examples, seconds, size).
"""

from __future__ import annotations

import json
import sys
from typing import Any, Literal

from jsonargparse import ActionConfigFile, ArgumentParser

from neuroflow.data.datamodule import MultiTaskDataModule
from neuroflow.statistics.files import KINDS

PROG = "python -m neuroflow stats"


def build_parser() -> ArgumentParser:
    """The command's parser (jsonargparse, as LightningCLI uses: `--config`, YAML data configs)."""
    parser = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0], parser_mode="omegaconf")
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file of these arguments")
    parser.add_argument("--experts", type=str, required=True, help="the experts directory (its manifest)")
    parser.add_subclass_arguments(MultiTaskDataModule, "data", required=True,
                                  help="the data config, e.g. configs/data/text4.yaml")
    parser.add_argument("--kinds", type=str, default=",".join(KINDS),
                        help="comma-separated statistics to compute: regmean, fisher")
    parser.add_argument("--max_batches", type=int | None, default=50,
                        help="training batches per expert (null: its whole capped training split)")
    parser.add_argument("--tasks", type=str | None, default=None,
                        help="comma-separated tasks whose experts to process (default: the data config's tasks)")
    parser.add_argument("--fisher_labels", type=Literal["sample", "expected"], default="sample",
                        help="Fisher labels: one drawn from the model's softmax per example, or every class "
                             "weighted by its probability (one backward pass per class)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the Fisher's label draws")
    parser.add_argument("--dtype", type=Literal["float32", "float64"], default="float32",
                        help="dtype of the saved tensors")
    parser.add_argument("--accelerator", type=str, default="auto", help="Lightning accelerator (one device)")
    parser.add_argument("--threads", type=int | None, default=None,
                        help="torch CPU threads during the pass (default: torch's; 1 is fastest on a busy CPU)")
    parser.add_argument("--progress", type=bool, default=False, help="show the progress bar")
    parser.add_argument("--summary", type=str | None, default=None, help="also write the records as JSON here")
    return parser


def _split(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run `python -m neuroflow stats` with `argv` (the arguments after `stats`).

    Args:
        argv: command-line arguments; None = `sys.argv[1:]`.

    Returns:
        the records of the written files (also printed).
    """
    from neuroflow.atomic import atomic_write_json
    from neuroflow.statistics.collect import compute_statistics

    parser = build_parser()
    cfg = parser.parse_args(list(argv) if argv is not None else sys.argv[1:])
    data = cfg.data.as_dict()
    records = compute_statistics(
        cfg.experts, data, kinds=_split(cfg.kinds) or [], max_batches=cfg.max_batches, tasks=_split(cfg.tasks),
        fisher_labels=cfg.fisher_labels, seed=cfg.seed, dtype=cfg.dtype, accelerator=cfg.accelerator,
        threads=cfg.threads, progress=cfg.progress,
    )
    rows = [r.as_dict() for r in records]
    print(f"{'expert':<16} {'kind':<8} {'examples':>8} {'batches':>7} {'seconds':>8} {'cpu s':>8} {'MB':>8}  file")
    for r in records:
        print(f"{r.expert:<16} {r.kind:<8} {r.examples:>8} {r.batches:>7} {r.seconds:>8.1f} {r.cpu_seconds:>8.1f} "
              f"{r.bytes / 2**20:>8.1f}  {r.path}")
    if cfg.summary:
        atomic_write_json(cfg.summary, rows)
    if not records:
        print(json.dumps({"written": 0}))
    return rows


if __name__ == "__main__":
    main()
