"""The experts an evaluation uses: chosen from a manifest (or given by path) and checked together.

`ExpertSet` does every check that needs no model weights when it is built (unique task names,
every requested task present, one base model and fingerprint, files present, a head for every
classification task), so bad input fails before a backbone is loaded. `check_base` then compares
the fingerprint of the loaded base with the experts'.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from neuroflow.data.task_spec import TaskSpec
from neuroflow.experts.expert import Expert, ExpertFormatError, read_expert
from neuroflow.experts.fingerprint import fingerprint_state_dict
from neuroflow.experts.manifest import load_experts


class ExpertInputError(ValueError):
    """The experts cannot be used together (or for the requested tasks); the message names the
    offending expert, file or task."""


def _experts_from_paths(paths: Sequence[str | Path]) -> list[Expert]:
    out = []
    for raw in paths:
        try:
            out.append(read_expert(raw))
        except FileNotFoundError as err:
            raise ExpertInputError(str(err)) from err
    return out


class ExpertSet:
    """Experts for a list of tasks, checked to belong together.

    Args:
        experts: an experts directory (its manifest), or a list of expert folders / `expert.json` files.
        tasks: the task names to use (each must have exactly one expert); None = every expert.

    Raises:
        ExpertInputError: duplicate tasks, a requested task without an expert, experts from
            different bases, a missing artifact file or a classification task without a head.
        FileNotFoundError: an experts directory that does not exist or holds no experts.
    """

    def __init__(self, experts: str | Path | Sequence[str | Path], tasks: Sequence[str] | None = None) -> None:
        try:
            if isinstance(experts, (str, Path)):
                found = load_experts(experts)
                self.source: str | list[str] = str(experts)
            else:
                found = _experts_from_paths(experts)
                self.source = [str(p) for p in experts]
        except ExpertFormatError as err:
            raise ExpertInputError(str(err)) from err
        by_task: dict[str, Expert] = {}
        for expert in found:
            task = expert.task
            if task in by_task:
                raise ExpertInputError(
                    f"two experts for task {task!r}: {by_task[task].name!r} and {expert.name!r} "
                    f"in {self.source}; task names must be unique (list the experts explicitly)"
                )
            by_task[task] = expert
        wanted = list(tasks) if tasks is not None else list(by_task)
        missing = [t for t in wanted if t not in by_task]
        if missing:
            raise ExpertInputError(
                f"no expert for task(s) {missing} in {self.source}; experts available for {sorted(by_task)}"
            )
        self.tasks = wanted
        self.experts: dict[str, Expert] = {t: by_task[t] for t in wanted}
        self._check_together()
        self._check_files()

    # ----------------------------------------------------------------- checks without weights
    def _check_together(self) -> None:
        first = self.experts[self.tasks[0]]
        for task in self.tasks[1:]:
            expert = self.experts[task]
            for key in ("base_fingerprint", "family"):
                if getattr(expert, key) != getattr(first, key):
                    raise ExpertInputError(
                        f"experts {first.name!r} and {expert.name!r} come from different bases: "
                        f"{key} {getattr(first, key)!r} vs {getattr(expert, key)!r}; only experts of one "
                        "base model merge"
                    )

    def _check_files(self) -> None:
        for task in self.tasks:
            expert = self.experts[task]
            if not expert.weights.path.exists():
                raise ExpertInputError(f"expert {expert.name!r}: backbone file {expert.weights.path} is missing")
            if expert.task_kind(task) in ("text_classification", "image_classification"):
                head = expert.heads.get(task)
                if head is None:
                    raise ExpertInputError(f"expert {expert.name!r}: task {task!r} has no head in its entry")
                if not head.path.is_file():
                    raise ExpertInputError(f"expert {expert.name!r}: head file {head.path} is missing")

    def check_specs(self, specs: Sequence[TaskSpec]) -> None:
        """The evaluated tasks must have the experts' label counts (a head predicts that many classes)."""
        for spec in specs:
            expert = self.experts[spec.name]
            head = expert.heads.get(spec.name)
            num = head.config.get("num_labels") if head is not None else None
            if num is not None and spec.kind in ("text_classification", "image_classification") \
                    and int(num) != spec.num_labels:
                raise ExpertInputError(
                    f"task {spec.name!r} has {spec.num_labels} labels in the data, but expert "
                    f"{expert.name!r}'s head predicts {num}"
                )

    def check_base(self, base_state: Mapping[str, Tensor]) -> str:
        """Compare the loaded base's fingerprint with the experts'; returns it.

        Raises:
            ExpertInputError: the base model on disk is not the one the experts were trained from.
        """
        fingerprint = fingerprint_state_dict(dict(base_state))
        if fingerprint != self.fingerprint:
            raise ExpertInputError(
                f"the base model {self.base_model!r} has fingerprint {fingerprint}, but the experts "
                f"({', '.join(self.names)}) were trained from {self.fingerprint}"
            )
        return fingerprint

    # ----------------------------------------------------------------- accessors
    @property
    def base_model(self) -> str:
        return self.experts[self.tasks[0]].base_model

    @property
    def family(self) -> str:
        return self.experts[self.tasks[0]].family

    @property
    def fingerprint(self) -> str:
        return self.experts[self.tasks[0]].base_fingerprint

    @property
    def names(self) -> list[str]:
        return [self.experts[t].name for t in self.tasks]

    def __getitem__(self, task: str) -> Expert:
        return self.experts[task]

    def task_specs(self) -> list[TaskSpec]:
        """The experts' own task specs (used when no DataModule provides them)."""
        specs = []
        for task in self.tasks:
            expert = self.experts[task]
            raw = expert.task_specs.get(task)
            if not raw:
                raise ExpertInputError(f"expert {expert.name!r} records no task_spec for {task!r}; pass `tasks`")
            specs.append(TaskSpec.from_dict(raw, origin=f"expert {expert.name}"))
        return specs

    def describe(self) -> list[dict[str, Any]]:
        """What a merge card records about each expert."""
        return [
            {
                "task": t,
                "name": self.experts[t].name,
                "mode": self.experts[t].mode,
                "format": self.experts[t].weights.format,
                "path": str(self.experts[t].weights.path),
                "created_at": self.experts[t].created_at,
            }
            for t in self.tasks
        ]

    def recorded_metrics(self, stage: str) -> dict[str, dict[str, float]]:
        """Metrics the manifest recorded for each expert on its own task, for `stage` (`val`/`test`).

        Entries record Lightning's logged values (`{stage}/{task}/{metric}`); tasks without any
        are left out, so the caller can evaluate those experts instead.
        """
        out = {}
        for task in self.tasks:
            values = self.experts[task].recorded_metrics(stage, task)
            if values:
                out[task] = values
        return out
