"""Writing one expert to an experts directory, and reading its head and task vector back.

Layout (paths in `expert.json` are relative to the experts directory):

    <name>/expert.json              the entry
    <name>/backbone.safetensors     format "weights": the fine-tuned backbone
    <name>/task_vector.safetensors  format "task_vector": fine-tuned minus pre-trained (float32)
    <name>/adapter/                 format "lora": peft `save_pretrained`
    <name>/head.safetensors         the task head(s), keys `<task>.<param>`
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

import neuroflow
from neuroflow.atomic import atomic_write_json, make_temp_dir, replace_dir
from neuroflow.experts.fingerprint import fingerprint_state_dict
from neuroflow.hub import model_reference
from neuroflow.experts.lora_delta import lora_adapter_deltas
from neuroflow.experts.expert import ENTRY, Expert, HeadRef, Weights
from neuroflow.experts.manifest import rebuild_manifest
from neuroflow.models.heads import ClassificationHead

if TYPE_CHECKING:
    from neuroflow.models.multitask_module import MultiTaskModule

SAVE_FORMATS = ("task_vector", "weights")


def task_vector_of(
    finetuned: dict[str, torch.Tensor], base: dict[str, torch.Tensor], where: str = "task vector"
) -> dict[str, torch.Tensor]:
    """`finetuned - base` in float32 for every floating-point tensor (integer buffers skipped).

    Raises:
        ValueError: the two dicts disagree on names or shapes (names listed).
    """
    missing, extra = sorted(set(base) - set(finetuned)), sorted(set(finetuned) - set(base))
    if missing or extra:
        raise ValueError(f"{where}: backbone keys differ from the base model: missing {missing[:5]}, "
                         f"unexpected {extra[:5]}")
    out: dict[str, torch.Tensor] = {}
    for key, tensor in finetuned.items():
        if not tensor.is_floating_point():
            continue
        if tensor.shape != base[key].shape:
            raise ValueError(f"{where}: {key} has shape {tuple(tensor.shape)}, base has {tuple(base[key].shape)}")
        out[key] = tensor.detach().float().cpu() - base[key].detach().float().cpu()
    return out


def _save_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))


def save_expert(
    experts_dir: str | os.PathLike,
    module: MultiTaskModule,
    base_state: dict[str, torch.Tensor] | None,
    base_fingerprint: str,
    save_format: str = "task_vector",
    name: str | None = None,
    metrics: dict[str, float] | None = None,
    monitor: str | None = None,
    checkpoint: str | None = None,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write `module` as one expert (atomically) and rebuild the manifest; returns the entry.

    Args:
        experts_dir: the shared experts directory.
        module: the trained module (its current weights are written).
        base_state: the pre-trained backbone (plain names); needed for `task_vector` of a full fit.
        base_fingerprint: `fingerprint_state_dict` of the pre-trained backbone.
        save_format: `task_vector` or `weights` for full fine-tuning; LoRA fits always save the
            adapter (format `lora`).
        name: expert name and folder; default: the task name (tasks joined by `+`).
        metrics: metrics of the saved weights (e.g. the best validation epoch's).
        monitor: the metric that selected the checkpoint.
        checkpoint: the checkpoint the weights came from.
        config: the resolved run configuration.
    """
    if save_format not in SAVE_FORMATS:
        raise ValueError(f"save_format {save_format!r} is not one of {list(SAVE_FORMATS)}")
    experts_dir = Path(experts_dir)
    name = name or "+".join(module.task_names)
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"expert name {name!r} is not a valid folder name")
    experts_dir.mkdir(parents=True, exist_ok=True)
    # Named after this process, so the next writer removes what a killed fit left.
    tmp = make_temp_dir(experts_dir / name)
    try:
        lora = bool(module.hparams.get("lora"))
        if lora:
            fmt, rel = "lora", f"{name}/adapter"
            module.backbone.save_pretrained(str(tmp / "adapter"))
        elif save_format == "weights":
            fmt, rel = "weights", f"{name}/backbone.safetensors"
            _save_safetensors(module.backbone_state_dict(), tmp / "backbone.safetensors")
        else:
            if base_state is None:
                raise ValueError("save_format 'task_vector' needs the pre-trained backbone state")
            fmt, rel = "task_vector", f"{name}/task_vector.safetensors"
            tv = task_vector_of(module.backbone_state_dict(), base_state, where=f"expert {name!r}")
            _save_safetensors(tv, tmp / "task_vector.safetensors")

        heads = {f"{task}.{k}": v for task, head in module.heads.items() for k, v in head.state_dict().items()}
        folder = experts_dir / name
        head_refs = {}
        if heads:
            _save_safetensors(heads, tmp / "head.safetensors")
            rel_head = f"{name}/head.safetensors"
            head_refs = {task: HeadRef(experts_dir / rel_head, f"{task}.", head.config(), rel_head)
                         for task, head in module.heads.items()}
        expert = Expert(
            name=name,
            tasks=list(module.task_names),
            task_specs={t: s.to_dict() for t, s in module.task_specs.items()},
            base_model=module.hparams.backbone,
            base_fingerprint=base_fingerprint,
            family=module.family,
            mode="lora" if lora else "full",
            weights=Weights(fmt, experts_dir / rel, rel),
            heads=head_refs,
            root=experts_dir,
            folder=folder,
            lora=module.hparams.get("lora"),
            metrics=dict(metrics or {}),
            extra={
                "monitor": monitor,
                "checkpoint": checkpoint,
                "config": config or {},
                # `base_model` may be a `pkg://` name: record where it resolved and what it is.
                "base_model_ref": model_reference(module.hparams.backbone, base_fingerprint),
                "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "neuroflow_version": neuroflow.__version__,
            },
        )
        entry = expert.to_entry()
        atomic_write_json(tmp / ENTRY, entry)
        replace_dir(tmp, experts_dir / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rebuild_manifest(experts_dir)
    return entry


def as_expert(experts_dir: str | os.PathLike, entry: Expert | dict[str, Any]) -> Expert:
    """`entry` as an `Expert` (entry dicts are parsed by `Expert.from_entry`, the one parser)."""
    return entry if isinstance(entry, Expert) else Expert.from_entry(entry, Path(experts_dir))


def load_head(ref: HeadRef, task: str, owner: str) -> ClassificationHead:
    """The head stored at `ref` for `task`.

    Raises:
        FileNotFoundError / ValueError: a missing file or weights that do not fit (names `owner`).
    """
    if not ref.path.is_file():
        raise FileNotFoundError(f"{owner}: head file {ref.path} is missing")
    tensors = load_file(str(ref.path))
    state = {k[len(ref.prefix):]: v for k, v in tensors.items() if k.startswith(ref.prefix)}
    head = ClassificationHead(**ref.config)
    try:
        head.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{ref.path}: head weights of task {task!r} do not fit its config: {err}") from err
    return head


def load_expert_head(
    experts_dir: str | os.PathLike, entry: Expert | dict[str, Any], task: str | None = None
) -> ClassificationHead | None:
    """The trained head of `task` (default: the expert's task); None for tasks without a head
    (text2text and causal LM tasks use the shared LM head).

    Raises:
        ValueError: the expert has no head for a classification task (names the expert and file).
    """
    expert = as_expert(experts_dir, entry)
    task = task or expert.task
    ref = expert.heads.get(task)
    if ref is None:
        if expert.task_kind(task) not in ("text_classification", "image_classification"):
            return None
        raise ValueError(f"expert {expert.name!r} in {experts_dir} has no head for task {task!r}; "
                         f"heads: {sorted(expert.heads)}")
    return load_head(ref, task, f"expert {expert.name!r}")


def load_task_vector(
    experts_dir: str | os.PathLike,
    entry: Expert | dict[str, Any],
    base_state_dict: dict[str, torch.Tensor],
    base_fingerprint: str | None = None,
) -> dict[str, torch.Tensor]:
    """The expert's dense task vector (float32) for every floating-point backbone tensor.

    Works for the three formats: `weights` (saved minus base), `task_vector` (as saved) and
    `lora` (the adapter turned into dense deltas); tensors the expert left unchanged are zeros.

    Args:
        experts_dir: the experts directory.
        entry: the expert's entry (from `load_manifest`).
        base_state_dict: the pre-trained backbone under plain names (`backbone_state_dict()`).
        base_fingerprint: its fingerprint, if already computed (it is computed otherwise).

    Raises:
        ValueError: the base is not the one the expert was trained from, or the artifact's tensors
            do not match the base (names the expert, file and keys).
    """
    expert = as_expert(experts_dir, entry)
    name = expert.name
    fingerprint = base_fingerprint or fingerprint_state_dict(base_state_dict)
    if expert.base_fingerprint and expert.base_fingerprint != fingerprint:
        raise ValueError(
            f"expert {name!r} was fine-tuned from base {expert.base_model!r} with fingerprint "
            f"{expert.base_fingerprint}, but the given base has {fingerprint}"
        )
    fmt, path = expert.weights.format, expert.weights.path
    if not path.exists():
        raise FileNotFoundError(f"expert {name!r}: {path} is missing")
    floats = {k: v for k, v in base_state_dict.items() if v.is_floating_point()}
    if fmt == "weights":
        return task_vector_of(load_file(str(path)), base_state_dict, where=str(path))
    if fmt == "task_vector":
        saved = load_file(str(path))
        if set(saved) != set(floats):
            missing, extra = sorted(set(floats) - set(saved)), sorted(set(saved) - set(floats))
            raise ValueError(f"{path}: keys differ from the base: missing {missing[:5]}, unexpected {extra[:5]}")
        for key, tensor in saved.items():
            if tensor.shape != floats[key].shape:
                raise ValueError(f"{path}: {key} has shape {tuple(tensor.shape)}, base has {tuple(floats[key].shape)}")
        return {k: v.float() for k, v in saved.items()}
    if fmt == "lora":
        deltas = lora_adapter_deltas(path, base_state_dict)
        out = {k: torch.zeros(v.shape, dtype=torch.float32) for k, v in floats.items()}
        out.update(deltas)
        return out
    raise ValueError(f"expert {name!r}: unknown backbone format {fmt!r}")
