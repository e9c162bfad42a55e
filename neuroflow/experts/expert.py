"""`Expert`: one fine-tuned expert as a typed value, and the one reader/writer of `expert.json`.

Every part of neuroflow that needs to know what an expert is (its tasks, base model, where its
weights live and in which form, its heads) asks an `Expert`; nothing else parses `expert.json`.
The format has had two spellings: version 1 wrote both singular and plural keys (`task`/`tasks`,
`task_spec`/`task_specs`, `head`/`heads`); `from_entry` is the single place that reads either,
and `to_entry` writes the current one (still carrying the singular keys older readers expect).

Artifact paths in an entry are relative to the experts directory (`<name>/task_vector.safetensors`)
and must stay inside the expert's own folder: an entry from someone else's disk cannot point the
reader at `../secret` or an absolute path.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENTRY = "expert.json"
ENTRY_VERSION = 2
WEIGHT_FORMATS = ("weights", "task_vector", "lora")
REQUIRED_KEYS = ("name", "base_model", "base_fingerprint", "family", "mode", "backbone")


class ExpertFormatError(ValueError):
    """An `expert.json` that cannot be read; the message names the file and the key."""


@dataclass(frozen=True)
class Weights:
    """Where an expert's backbone weights live and in which form.

    Args:
        format: `weights` (the fine-tuned backbone), `task_vector` (fine-tuned minus pre-trained)
            or `lora` (a peft adapter folder).
        path: the file or adapter folder (absolute, inside the expert's folder).
        relative: the path as the entry records it (relative to the experts directory).
    """

    format: str
    path: Path
    relative: str


@dataclass(frozen=True)
class HeadRef:
    """A task head stored with an expert (or a merged model).

    Args:
        path: the safetensors file holding the head's tensors.
        prefix: key prefix of this task's tensors in that file (`<task>.`).
        config: `ClassificationHead` keyword arguments.
        relative: the path as recorded.
    """

    path: Path
    prefix: str
    config: dict[str, Any]
    relative: str

    def as_entry(self) -> dict[str, Any]:
        return {"path": self.relative, "prefix": self.prefix, "config": dict(self.config)}


@dataclass
class Expert:
    """One expert: what it was trained on, from which base, and where its weights are.

    Args:
        name: the expert's name, also its folder (the task name for a single-task fit).
        tasks: the task names it was trained on, in order.
        task_specs: task name -> TaskSpec as a dict (`TaskSpec.to_dict()`).
        base_model: the pre-trained model (path or hub id) it was fine-tuned from.
        base_fingerprint: `fingerprint_state_dict` of that base's backbone.
        family: the backbone family (`encoder`, `seq2seq`, `vision`, ...).
        mode: `full` or `lora`.
        weights: where the backbone weights are and in which form.
        heads: task name -> its head (none for tasks using the shared LM head).
        root: the experts directory the entry's paths are relative to.
        folder: the expert's own folder (artifacts must live inside it).
        lora: the LoraConfig keyword arguments of a LoRA fit.
        metrics: what was logged for the saved weights (`val/<task>/<metric>`, ...).
        extra: every other entry key (monitor, checkpoint, config, created_at, versions).
    """

    name: str
    tasks: list[str]
    task_specs: dict[str, dict[str, Any]]
    base_model: str
    base_fingerprint: str
    family: str
    mode: str
    weights: Weights
    heads: dict[str, HeadRef]
    root: Path
    folder: Path
    lora: dict[str, Any] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def task(self) -> str:
        """The task an evaluation assigns this expert to: its only task, else its name."""
        return self.tasks[0] if len(self.tasks) == 1 else self.name

    def task_kind(self, task: str | None = None) -> str:
        spec = self.task_specs.get(task or self.task) or next(iter(self.task_specs.values()), {})
        return spec.get("kind", "text_classification")

    @property
    def created_at(self) -> str | None:
        return self.extra.get("created_at")

    def describe(self) -> str:
        return f"expert {self.name!r} ({self.weights.path})"

    # ------------------------------------------------------------------ the format
    @classmethod
    def from_entry(
        cls, entry: dict[str, Any], root: str | os.PathLike, where: str | None = None,
        folder: str | os.PathLike | None = None,
    ) -> Expert:
        """Parse an entry dict (any version) whose paths are relative to the experts dir `root`.

        Args:
            entry: the parsed `expert.json`.
            root: the experts directory.
            where: what to call the entry in messages (its file).
            folder: the expert's own folder; default `root / name`.

        Raises:
            ExpertFormatError: a missing or malformed key, or an artifact path outside the
                expert's folder (names `where` and the key).
        """
        where = where or f"expert entry in {root}"
        if not isinstance(entry, dict):
            raise ExpertFormatError(f"{where}: an expert entry must be a JSON object")
        missing = [k for k in REQUIRED_KEYS if k not in entry]
        if missing:
            raise ExpertFormatError(f"{where}: expert entry lacks {missing}")
        name = _text(entry, "name", where)
        root = Path(root)
        folder = Path(folder) if folder is not None else root / name
        tasks = entry.get("tasks") or ([entry["task"]] if entry.get("task") else [name])
        if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
            raise ExpertFormatError(f"{where}: `tasks` must be a list of task names, got {tasks!r}")
        specs = entry.get("task_specs")
        if not specs and entry.get("task_spec"):
            specs = {tasks[0]: entry["task_spec"]}
        specs = _mapping(specs or {}, "task_specs", where)
        backbone = _mapping(entry["backbone"], "backbone", where)
        fmt = backbone.get("format")
        if fmt not in WEIGHT_FORMATS:
            raise ExpertFormatError(f"{where}: backbone.format {fmt!r} is not one of {list(WEIGHT_FORMATS)}")
        rel = _text(backbone, "path", where, key_path="backbone.path")
        weights = Weights(fmt, confined(root, folder, rel, where, "backbone.path"), rel)
        raw_heads = entry.get("heads") or ({tasks[0]: entry["head"]} if entry.get("head") else {})
        heads = {task: head_ref(root, folder, h, where, f"heads.{task}")
                 for task, h in _mapping(raw_heads, "heads", where).items()}
        known = set(REQUIRED_KEYS) | {"task", "tasks", "task_spec", "task_specs", "head", "heads", "lora",
                                      "metrics", "version"}
        return cls(
            name=name, tasks=list(tasks), task_specs=dict(specs), base_model=str(entry["base_model"]),
            base_fingerprint=str(entry["base_fingerprint"]), family=str(entry["family"]), mode=str(entry["mode"]),
            weights=weights, heads=heads, root=root, folder=folder, lora=entry.get("lora"),
            metrics=dict(entry.get("metrics") or {}),
            extra={k: v for k, v in entry.items() if k not in known},
        )

    def to_entry(self) -> dict[str, Any]:
        """The entry as written to `expert.json` (current version)."""
        heads = {t: h.as_entry() for t, h in self.heads.items()}
        first = self.tasks[0]
        return {
            "version": ENTRY_VERSION,
            "name": self.name,
            "task": self.task,
            "tasks": list(self.tasks),
            "task_spec": self.task_specs.get(first),
            "task_specs": dict(self.task_specs),
            "base_model": self.base_model,
            "base_fingerprint": self.base_fingerprint,
            "family": self.family,
            "mode": self.mode,
            "lora": self.lora,
            "backbone": {"format": self.weights.format, "path": self.weights.relative},
            "head": heads.get(first) if len(self.tasks) == 1 else None,
            "heads": heads,
            "metrics": dict(self.metrics),
            **self.extra,
        }

    def recorded_metrics(self, stage: str, task: str | None = None) -> dict[str, float]:
        """The metrics recorded at fit time for `task` on `stage` (`val`/`test`), loss left out."""
        prefix = f"{stage}/{task or self.task}/"
        out = {}
        for key, value in self.metrics.items():
            if key.startswith(prefix) and key[len(prefix):] != "loss":
                try:
                    number = float(value)
                except (TypeError, ValueError):
                    continue
                if number == number and abs(number) != float("inf"):
                    out[key[len(prefix):]] = number
        return out


def read_expert(path: str | os.PathLike, root: str | os.PathLike | None = None) -> Expert:
    """Read `<folder>/expert.json` (or the file itself) into an `Expert`.

    Args:
        path: an expert folder or its `expert.json`.
        root: the experts directory its paths are relative to; default: the folder's parent.

    Raises:
        ExpertFormatError: unreadable JSON or a malformed entry (names the file).
        FileNotFoundError: no entry file there.
    """
    path = Path(path)
    entry_file = path if path.suffix == ".json" else path / ENTRY
    if not entry_file.is_file():
        raise FileNotFoundError(f"expert {path}: no {ENTRY} at {entry_file}")
    try:
        entry = json.loads(entry_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ExpertFormatError(f"{entry_file}: cannot read the expert entry: {err}") from err
    return Expert.from_entry(entry, root if root is not None else entry_file.parent.parent, where=str(entry_file),
                             folder=entry_file.parent)


def confined(root: Path, folder: Path, relative: str, where: str, key: str) -> Path:
    """`root / relative`, required to lie inside `folder` (symlinks resolved).

    Raises:
        ExpertFormatError: an absolute path or one that leaves the folder.
    """
    if os.path.isabs(relative):
        raise ExpertFormatError(f"{where}: {key} {relative!r} is absolute; artifact paths are relative to "
                                f"the experts directory and must stay inside the expert's folder {folder}")
    resolved = (root / relative).resolve()
    inside = folder.resolve()
    if resolved != inside and inside not in resolved.parents:
        raise ExpertFormatError(f"{where}: {key} {relative!r} points outside the expert's folder {folder}")
    return root / relative


def head_ref(root: Path, folder: Path, raw: Any, where: str, key: str) -> HeadRef:
    """Parse one head record (`{path, prefix, config}`)."""
    raw = _mapping(raw, key, where)
    rel = _text(raw, "path", where, key_path=f"{key}.path")
    return HeadRef(confined(root, folder, rel, where, f"{key}.path"), str(raw.get("prefix", "")),
                   dict(_mapping(raw.get("config") or {}, f"{key}.config", where)), rel)


def _mapping(value: Any, key: str, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ExpertFormatError(f"{where}: `{key}` must be a mapping, got {type(value).__name__}")
    return value


def _text(mapping: dict[str, Any], key: str, where: str, key_path: str | None = None) -> str:
    value = mapping.get(key)
    if not isinstance(value, str) or not value:
        raise ExpertFormatError(f"{where}: `{key_path or key}` must be a non-empty string, got {value!r}")
    return value
