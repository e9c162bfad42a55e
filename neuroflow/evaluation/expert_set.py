"""The experts an evaluation uses: chosen from a manifest (or given by path) and checked together.

`ExpertSet` does every check that needs no model weights when it is built (unique task names,
every requested task present, one base model and fingerprint, files present, a head for every
classification task), so bad input fails before a backbone is loaded. `check_base` then compares
the fingerprint of the loaded base with the experts'.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from neuroflow.data.task_spec import TaskSpec
from neuroflow.experts import fingerprint_state_dict, load_manifest
from neuroflow.experts.manifest import ENTRY, read_entry

BACKBONE_FORMATS = ("weights", "task_vector", "lora")


class ExpertInputError(ValueError):
    """The experts cannot be used together (or for the requested tasks); the message names the
    offending expert, file or task."""


def _entries_from_paths(paths: Sequence[str | Path]) -> list[tuple[dict[str, Any], Path]]:
    out = []
    for raw in paths:
        path = Path(raw)
        entry_file = path if path.suffix == ".json" else path / ENTRY
        if not entry_file.is_file():
            raise ExpertInputError(f"expert {raw}: no {entry_file.name} at {entry_file}")
        # Paths inside an entry are relative to the experts directory, the parent of the entry's folder.
        out.append((read_entry(entry_file), entry_file.parent.parent))
    return out


class ExpertSet:
    """Experts for a list of tasks, with their manifest entries, checked to belong together.

    Args:
        experts: an experts directory (its manifest), or a list of expert folders / `expert.json` files.
        tasks: the task names to use (each must have exactly one expert); None = every expert.

    Raises:
        ExpertInputError: duplicate tasks, a requested task without an expert, experts from
            different bases, a missing artifact file or a classification task without a head.
        FileNotFoundError: an experts directory that does not exist or holds no experts.
    """

    def __init__(self, experts: str | Path | Sequence[str | Path], tasks: Sequence[str] | None = None) -> None:
        if isinstance(experts, (str, Path)):
            root = Path(experts)
            found = [(entry, root) for entry in load_manifest(root)]
            self.source = str(root)
        else:
            found = _entries_from_paths(experts)
            self.source = [str(p) for p in experts]
        by_task: dict[str, tuple[dict[str, Any], Path]] = {}
        for entry, root in found:
            task = entry["task"]
            if task in by_task:
                raise ExpertInputError(
                    f"two experts for task {task!r}: {by_task[task][0]['name']!r} and {entry['name']!r} "
                    f"in {self.source}; task names must be unique (list the experts explicitly)"
                )
            by_task[task] = (entry, root)
        wanted = list(tasks) if tasks is not None else list(by_task)
        missing = [t for t in wanted if t not in by_task]
        if missing:
            raise ExpertInputError(
                f"no expert for task(s) {missing} in {self.source}; experts available for {sorted(by_task)}"
            )
        self.tasks = wanted
        self.entries = {t: by_task[t][0] for t in wanted}
        self.roots = {t: by_task[t][1] for t in wanted}
        self._check_together()
        self._check_files()

    # ----------------------------------------------------------------- checks without weights
    def _check_together(self) -> None:
        first_task = self.tasks[0]
        first = self.entries[first_task]
        for task in self.tasks[1:]:
            entry = self.entries[task]
            for key in ("base_fingerprint", "base_model", "family"):
                if entry[key] != first[key]:
                    raise ExpertInputError(
                        f"experts {first['name']!r} and {entry['name']!r} come from different bases: "
                        f"{key} {first[key]!r} vs {entry[key]!r}; only experts of one base model merge"
                    )

    def _check_files(self) -> None:
        for task in self.tasks:
            entry, root = self.entries[task], self.roots[task]
            backbone = entry["backbone"]
            fmt = backbone.get("format")
            if fmt not in BACKBONE_FORMATS:
                raise ExpertInputError(
                    f"expert {entry['name']!r}: unknown backbone format {fmt!r} (known: {list(BACKBONE_FORMATS)})"
                )
            path = root / backbone["path"]
            if not path.exists():
                raise ExpertInputError(f"expert {entry['name']!r}: backbone file {path} is missing")
            kind = (entry.get("task_spec") or {}).get("kind", "text_classification")
            head = entry.get("head")
            if kind != "text2text":
                if not head or not head.get("path"):
                    raise ExpertInputError(f"expert {entry['name']!r}: task {task!r} has no head in its entry")
                if not (root / head["path"]).is_file():
                    raise ExpertInputError(f"expert {entry['name']!r}: head file {root / head['path']} is missing")

    def check_specs(self, specs: Sequence[TaskSpec]) -> None:
        """The evaluated tasks must have the experts' label counts (a head predicts that many classes)."""
        for spec in specs:
            entry = self.entries[spec.name]
            head = entry.get("head") or {}
            num = (head.get("config") or {}).get("num_labels")
            if num is not None and spec.kind != "text2text" and int(num) != spec.num_labels:
                raise ExpertInputError(
                    f"task {spec.name!r} has {spec.num_labels} labels in the data, but expert "
                    f"{entry['name']!r}'s head predicts {num}"
                )

    def check_base(self, base_state: Mapping[str, Tensor]) -> str:
        """Compare the loaded base's fingerprint with the experts'; returns it.

        Raises:
            ExpertInputError: the base model on disk is not the one the experts were trained from.
        """
        fingerprint = fingerprint_state_dict(dict(base_state))
        expected = self.entries[self.tasks[0]]["base_fingerprint"]
        if fingerprint != expected:
            raise ExpertInputError(
                f"the base model {self.base_model!r} has fingerprint {fingerprint}, but the experts "
                f"({', '.join(self.names)}) were trained from {expected}"
            )
        return fingerprint

    # ----------------------------------------------------------------- accessors
    @property
    def base_model(self) -> str:
        return self.entries[self.tasks[0]]["base_model"]

    @property
    def family(self) -> str:
        return self.entries[self.tasks[0]]["family"]

    @property
    def fingerprint(self) -> str:
        return self.entries[self.tasks[0]]["base_fingerprint"]

    @property
    def names(self) -> list[str]:
        return [self.entries[t]["name"] for t in self.tasks]

    def task_specs(self) -> list[TaskSpec]:
        """The experts' own task specs (used when no DataModule provides them)."""
        specs = []
        for task in self.tasks:
            raw = self.entries[task].get("task_spec")
            if not raw:
                raise ExpertInputError(f"expert {self.entries[task]['name']!r} records no task_spec; pass `tasks`")
            specs.append(TaskSpec.from_dict(raw, origin=f"expert {self.entries[task]['name']}"))
        return specs

    def path(self, task: str, relative: str) -> Path:
        return self.roots[task] / relative

    def head_path(self, task: str) -> Path | None:
        head = self.entries[task].get("head")
        return self.path(task, head["path"]) if head and head.get("path") else None

    def describe(self) -> list[dict[str, Any]]:
        """What a merge card records about each expert."""
        return [
            {
                "task": t,
                "name": self.entries[t]["name"],
                "mode": self.entries[t].get("mode"),
                "format": self.entries[t]["backbone"]["format"],
                "path": str(self.path(t, self.entries[t]["backbone"]["path"])),
                "created_at": self.entries[t].get("created_at"),
            }
            for t in self.tasks
        ]

    def recorded_metrics(self, stage: str) -> dict[str, dict[str, float]]:
        """Metrics the manifest recorded for each expert on its own task, for `stage` (`val`/`test`).

        Entries record Lightning's logged values (`{stage}/{task}/{metric}`); tasks without any
        are left out, so the caller can evaluate those experts instead.
        """
        out: dict[str, dict[str, float]] = {}
        for task in self.tasks:
            metrics = self.entries[task].get("metrics") or {}
            prefix = f"{stage}/{task}/"
            values = {
                key[len(prefix):]: float(v)
                for key, v in metrics.items()
                if key.startswith(prefix) and key[len(prefix):] != "loss" and _is_number(v)
            }
            if values:
                out[task] = values
        return out


def _is_number(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
