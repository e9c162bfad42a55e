"""`merge_checkpoints`: Hugging Face checkpoints and peft adapters in, a loadable sharded model out.

```python
card = merge_checkpoints("base/", ["ft-a/", "org/ft-b", "lora-c/"], TIES(mask_rate=0.8), "out/",
                         max_shard_size="5GB", dtype="bfloat16", threads=2)
```
Order of work: classify every reference (adapter folder: `adapter_config.json`; model folder:
`config.json` + weights; else a hub id), read headers and small files only, run the checks, then
(hub ids: download the weights,) stream the merge tensor by tensor into the shard writer inside a
temporary sibling of the output, write config/tokenizer/cards, and rename it into place.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from neuroflow.atomic import clean_stale, make_temp_dir
from neuroflow.checkpoints.adapter import AdapterExpert, is_adapter
from neuroflow.checkpoints.checks import CheckReport, check_experts
from neuroflow.checkpoints.errors import CheckpointError
from neuroflow.checkpoints.folder import CheckpointFolder, has_weights
from neuroflow.checkpoints.hub import ADAPTER_WEIGHTS, MODEL_WEIGHTS, SMALL_FILES, RemoteHeaders, fetch, is_hub_id
from neuroflow.checkpoints.model_card import build_merge_card, write_cards
from neuroflow.checkpoints.output import (
    copy_side_files, dtype_name, finish, write_config,
)
from neuroflow.checkpoints.shard_writer import ShardWriter
from neuroflow.checkpoints.source import checkpoint_experts
from neuroflow.merging.base import MergeMethod
from neuroflow.merging.engine import merge_stream
from neuroflow.merging.heap import steady_heap
from neuroflow.merging.prefetch import behind
from neuroflow.merging.routing import routing_from_module

log = logging.getLogger(__name__)
# Architectures storing some Linear-like weights as `in x out` (transformers' Conv1D): only their
# module routing differs from the shape rule, so only they (and convolutions, > 2-D) build the model.
TRANSPOSED_MODEL_TYPES = {"gpt2", "openai-gpt", "imagegpt", "decision_transformer", "clvp", "omniasr", "convbert"}
OUTPUT_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class _Phases:
    """Wall and CPU seconds (the whole process's: reader, writer and worker threads included) of
    each phase of a merge, for the merge card: where the time went, and how many cores it used."""

    def __init__(self) -> None:
        self._since = (time.perf_counter(), time.process_time())
        self.seconds: dict[str, dict[str, float]] = {}

    def lap(self, phase: str) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        self.seconds[phase] = {"wall_s": round(wall - self._since[0], 3), "cpu_s": round(cpu - self._since[1], 3)}
        self._since = (wall, cpu)


def classify(ref: str) -> str:
    """"adapter", "model" or "hub" for a reference (adapter and model are local folders).

    Args:
        ref: a folder or a hub id.
    """
    path = Path(ref)
    if path.is_dir():
        if is_adapter(path):
            return "adapter"
        if has_weights(path):
            return "model"
        raise CheckpointError(f"{path}: neither a peft adapter (adapter_config.json) nor a model folder (config.json + weights)")
    if is_hub_id(ref):
        return "hub"
    raise CheckpointError(f"{ref}: no such folder, and not a hub id (org/name)")


def fingerprint(folder: CheckpointFolder | Path) -> str:
    """SHA-256 over the weight files' headers and sizes and config.json: cheap (no tensor read),
    and it changes when any tensor's name, shape, dtype, offset or file changes."""
    digest = hashlib.sha256()
    files = folder.files if isinstance(folder, CheckpointFolder) else sorted(Path(folder).glob("adapter_model.*"))
    root = folder.path if isinstance(folder, CheckpointFolder) else Path(folder)
    for file in [*files, root / "config.json", root / "adapter_config.json"]:
        if not file.is_file():
            continue
        with open(file, "rb") as handle:
            head = handle.read(8)
            length = int.from_bytes(head, "little") if file.suffix == ".safetensors" else 0
            digest.update(file.name.encode() + str(file.stat().st_size).encode() + head + handle.read(min(length, 100_000_000)))
            if file.suffix in (".json", ".bin"):
                digest.update(handle.read())
    return "sha256:" + digest.hexdigest()


def routing_for(config: dict[str, Any], names: Sequence[str]) -> dict[str, Any] | None:
    """Routes from the architecture's modules (built on the meta device: no memory, no weights),
    so e.g. GPT-2's transposed Conv1D weights get neuron columns; None when the class is unknown."""
    try:
        import transformers

        cls = getattr(transformers, (config.get("architectures") or [""])[0], None)
        if cls is None:
            return None
        kind = config.get("model_type")
        model_config = transformers.AutoConfig.for_model(kind, **{k: v for k, v in config.items() if k != "model_type"})
        with torch.device("meta"):
            model = cls(model_config)
    except Exception as err:  # any failure only means the shape rule routes the tensors
        log.info("routing by shape (could not build %s on the meta device: %s)", config.get("architectures"), err)
        return None
    routes = routing_from_module(model)
    return {name: routes[name] for name in names if name in routes}


def _open(ref: str, kind: str, base_view) -> tuple[Any, dict[str, Any]]:
    """(header view or adapter, card facts) of one expert, from small files only."""
    if kind == "adapter":
        return AdapterExpert(ref, base_view), {"name": ref, "kind": "adapter", "fingerprint": fingerprint(Path(ref))}
    if kind == "model":
        folder = CheckpointFolder(ref)
        return folder, {"name": ref, "kind": "model", "fingerprint": fingerprint(folder)}
    small = fetch(ref, SMALL_FILES)
    if is_adapter(small):
        local = fetch(ref, SMALL_FILES + ADAPTER_WEIGHTS)  # adapters are small: fetched at once
        return AdapterExpert(local, base_view), {"name": ref, "kind": "adapter", "revision": local.name}
    return RemoteHeaders(ref, small), {"name": ref, "kind": "model", "revision": small.name}


def merge_checkpoints(
    base: str,
    experts: list[str],
    method: MergeMethod,
    output_dir: str,
    max_shard_size: str = "5GB",
    dtype: str | None = None,
    threads: int | None = None,
    vocab: str = "refuse",
    command: str | None = None,
    config: dict[str, Any] | None = None,
    exclude: Sequence[str] | None = None,
    progress: Any = None,
) -> dict[str, Any]:
    """Merge Hugging Face checkpoints (folders, hub ids) and peft adapters into `output_dir`.

    Args:
        base: the base model folder or hub id.
        experts: model folders, adapter folders or hub ids of the experts.
        method: the merge method.
        output_dir: the output folder (replaced atomically when it exists).
        max_shard_size: shard size limit, "5GB"-style (transformers' default).
        dtype: dtype of the written float weights ("bfloat16", "float16", "float32"; None keeps each
            tensor's base dtype).
        threads: torch intra-op threads for the maths (None: torch's default, every core).
        vocab: "refuse" (resized vocabularies are an error) or "shared_rows".
        command: the command line that ran the merge (recorded in the model card).
        config: the config the merge ran from (recorded in the model card).
        exclude: glob patterns of tensors copied from the base instead of merged.
        progress: per-tensor progress hook (see `neuroflow.merging.merge_stream`).

    Returns:
        the merge card (also written as `merge_card.json`, and rendered as `README.md`).

    Raises:
        CheckpointError: a reference, file or tensor that cannot be read or merged, before any
            tensor is read; `MergeInputError` for inputs the engine refuses. Nothing is left at
            `output_dir` (nor a temporary folder) when a merge fails.
    """
    if dtype is not None and dtype not in OUTPUT_DTYPES:
        raise CheckpointError(f"dtype must be one of {', '.join(OUTPUT_DTYPES)} or None, got {dtype!r}")
    if not experts:
        raise CheckpointError("no experts given: merging needs at least one expert")
    phases = _Phases()
    steady_heap()  # the same page faults every run, and fewer (see `neuroflow.merging.heap`)
    out = Path(output_dir)
    for stale in clean_stale(out):
        log.warning("removed %s, left by an interrupted merge", stale)

    base_kind = classify(base)
    if base_kind == "adapter":
        raise CheckpointError(f"{base}: the base must be a model, not an adapter")
    base_view = CheckpointFolder(base) if base_kind == "model" else RemoteHeaders(base, fetch(base, SMALL_FILES))
    opened = [_open(ref, classify(ref), base_view) for ref in experts]
    views = [view for view, _ in opened]
    report = check_experts(base_view, views, experts, vocab=vocab, exclude=exclude)
    for warning in report.warnings:
        log.warning(warning)

    # Checks passed: only now download hub weights.
    base_folder = base_view if isinstance(base_view, CheckpointFolder) else CheckpointFolder(fetch(base, SMALL_FILES + MODEL_WEIGHTS))
    readers = [CheckpointFolder(fetch(v.ref, SMALL_FILES + MODEL_WEIGHTS)) if isinstance(v, RemoteHeaders) else v for v in views]
    source = checkpoint_experts(base_folder, readers, experts, rows=report.rows)
    phases.lap("checks")
    return _write(base, base_folder, source, readers, [facts for _, facts in opened], report, method, out,
                  max_shard_size, dtype, threads, command, config, exclude, progress, phases)


def _output_plan(base: CheckpointFolder, report: CheckReport, dtype: torch.dtype | None) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    plan = []
    for name in base:
        shape, own = base.meta(name)
        if name in report.extra_rows:
            shape = (report.extra_rows[name][1], *shape[1:])
        plan.append((name, tuple(shape), dtype if dtype is not None and own.is_floating_point else own))
    return plan


def _write(base_ref, base, source, readers, facts, report, method, out, max_shard_size, dtype, threads,
           command, config, exclude, progress, phases: _Phases) -> dict[str, Any]:
    out_dtype = OUTPUT_DTYPES[dtype] if dtype else None
    plan = _output_plan(base, report, out_dtype)
    # Neuron-wise methods (NeuroMerging, TSV-M, Iso-C, RegMean) need the real neuron axis; the
    # module routing needs the architecture built on the meta device, so it is built only where
    # it differs from the shape rule (transposed Conv1D weights, conv kernels).
    needs_modules = base.config.get("model_type") in TRANSPOSED_MODEL_TYPES or any(len(base.meta(n)[0]) > 2 for n in base)
    routing = routing_for(base.config, list(base)) if needs_modules else None
    tmp = make_temp_dir(out)
    writer = None
    try:
        stream = merge_stream(base, source, method, routing=routing, exclude=exclude, progress=progress, threads=threads)
        phases.lap("statistics")  # validation and the method's statistics passes (TIES' global trim...)
        writer = ShardWriter(tmp, plan, max_shard_size)
        planned = {name: dtype_ for name, _, dtype_ in plan}
        # The writer thread copies each merged tensor into the page cache while the next one is
        # merged (at 210M the copies cost 0.6-1.4 CPU s, most of it the kernel handing out pages).
        # Tensors merged by row blocks are written block by block, never assembled.
        with behind(lambda item: writer.write(*item)) as write:
            for name, start, tensor, last in stream.pieces():
                extra = last and name in report.extra_rows
                write.put((name, tensor.to(planned[name]), start, last and not extra))
                if extra:  # a resized vocabulary: the rows only one expert has, after the shared ones
                    owner, _ = report.extra_rows[name]
                    rows = report.rows[name]
                    write.put((name, readers[owner][name][rows:].to(tensor.dtype).to(planned[name]), rows, True))
                del tensor
        writer.close()
        phases.lap("merge_and_write")
        written_dtype = out_dtype or next((d for _, _, d in plan if d.is_floating_point), torch.float32)
        overrides = {"vocab_size": report.vocab["output_rows"]} if report.vocab else None
        write_config(tmp, base.config, written_dtype, overrides)
        tokenizer_home = readers[report.tokenizer_from].path if report.tokenizer_from is not None else base.path
        copied = copy_side_files(base.path, tmp)
        if tokenizer_home != base.path:
            copied = sorted(set(copied) | set(copy_side_files(tokenizer_home, tmp)))
        card = build_merge_card(
            base_model={"name": base_ref, "fingerprint": fingerprint(base)},
            experts=facts,
            merge=stream.info,
            output_dir=str(out),
            dtype=dtype_name(written_dtype),
            max_shard_size=max_shard_size,
            shards=len(writer.files),
            files=writer.files,
            copied_files=copied,
            vocab=report.vocab,
            warnings=report.warnings,
            command=command,
            config=config or {},
            threads=threads,
            timings=phases.seconds,
        )
        log.info("merge timings (wall / CPU s): %s", ", ".join(
            f"{phase} {t['wall_s']:.2f} / {t['cpu_s']:.2f}" for phase, t in phases.seconds.items()))
        write_cards(tmp, card)
        finish(tmp, out)
    except BaseException:
        if writer is not None:
            writer.abort()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return card
