"""Is each expert at its plateau? Its score next to the same expert trained twice as long.

A normalized merge score divides by the experts' own scores, so an expert that would still gain
from more training makes the benchmark measure the training budget instead of the merge. The check
fits every expert again with the budget multiplied (epochs and early-stopping patience) and
compares, per task, the best validation score each fit selected (from the two experts manifests)
and, when both were evaluated, the test score (from the two `individual` reports).
`benchmarks/plateau_check.py` runs the longer fits and prints the table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class PlateauRow:
    """One task's scores at the recipe's budget and at the longer one.

    Attributes:
        task: the task name.
        metric: the primary metric compared.
        validation: (recipe budget, longer budget) best validation score, in [0, 1] units.
        test: (recipe budget, longer budget) test score, or None when a report is missing.
        tolerance: the largest difference that counts as "at the plateau".
    """

    task: str
    metric: str
    validation: tuple[float, float]
    test: tuple[float, float] | None
    tolerance: float

    @property
    def gain(self) -> float:
        """What the longer budget adds on validation (negative: it scored lower)."""
        return self.validation[1] - self.validation[0]

    @property
    def test_gain(self) -> float | None:
        return None if self.test is None else self.test[1] - self.test[0]

    @property
    def at_plateau(self) -> bool:
        """Within `tolerance` of the longer fit on validation (and on test when known)."""
        gains = [self.gain] + ([] if self.test_gain is None else [self.test_gain])
        return all(abs(g) <= self.tolerance for g in gains)


def manifest_scores(experts_dir: str | Path) -> dict[str, tuple[str, float]]:
    """Task -> (monitored metric, best validation value) of every expert in a manifest.

    Args:
        experts_dir: an experts folder (holding `manifest.json`).

    Raises:
        FileNotFoundError: no manifest there (the message names the folder).
        KeyError: an expert without its monitored value (the message names the expert).
    """
    path = Path(experts_dir) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no experts manifest (fit the experts first)")
    scores = {}
    for entry in json.loads(path.read_text())["experts"]:
        monitor = entry.get("monitor")
        metrics = entry.get("metrics") or {}
        if monitor not in metrics:
            raise KeyError(f"{path}: expert {entry.get('name')!r} has no value for its monitor {monitor!r}")
        scores[entry["task"]] = (monitor.rsplit("/", 1)[-1], float(metrics[monitor]))
    return scores


def report_scores(report: str | Path) -> dict[str, float]:
    """Task -> primary test metric from an evaluation report (`report.json`), {} when absent.

    Args:
        report: the report file.
    """
    path = Path(report)
    if not path.is_file():
        return {}
    tasks: dict[str, Any] = json.loads(path.read_text())["tasks"]
    return {task: float(entry["metrics"][entry["primary_metric"]]) for task, entry in tasks.items()}


def plateau_rows(
    reference: dict[str, tuple[str, float]],
    longer: dict[str, tuple[str, float]],
    reference_test: dict[str, float] | None = None,
    longer_test: dict[str, float] | None = None,
    tolerance: float = 0.01,
) -> list[PlateauRow]:
    """Compare the experts task by task (tasks of `reference` that `longer` also has, in order).

    Args:
        reference: `manifest_scores` at the recipe's budget.
        longer: `manifest_scores` at the longer budget.
        reference_test: `report_scores` at the recipe's budget (optional).
        longer_test: `report_scores` at the longer budget (optional).
        tolerance: the largest difference counted as "at the plateau" (0.01 = 1 point).
    """
    rows = []
    for task, (metric, value) in reference.items():
        if task not in longer:
            continue
        test = None
        if reference_test and longer_test and task in reference_test and task in longer_test:
            test = (reference_test[task], longer_test[task])
        rows.append(PlateauRow(task, metric, (value, longer[task][1]), test, tolerance))
    return rows


def render_plateau_table(rows: list[PlateauRow], factor: float = 2.0) -> str:
    """A markdown table of `plateau_rows`, scores in points (%), with a verdict per task.

    Args:
        rows: from `plateau_rows`.
        factor: how many times longer the second budget is (for the header).
    """

    def pts(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.2f}"

    def signed(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:+.2f}"

    lines = [
        f"| task | metric | val (budget) | val ({factor:g}x) | gain | test (budget) | test ({factor:g}x) | gain | at plateau |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        test = row.test or (None, None)
        verdict = "yes" if row.at_plateau else f"**no** (> {100 * row.tolerance:g} point)"
        lines.append(
            f"| {row.task} | {row.metric} | {pts(row.validation[0])} | {pts(row.validation[1])} | {signed(row.gain)} "
            f"| {pts(test[0])} | {pts(test[1])} | {signed(row.test_gain)} | {verdict} |"
        )
    met = sum(row.at_plateau for row in rows)
    lines.append("")
    lines.append(f"{met} of {len(rows)} experts within {100 * (rows[0].tolerance if rows else 0.01):g} point of the "
                 f"{factor:g}x budget.")
    return "\n".join(lines)


def longer_budget(recipe: Any, factor: float) -> list[str]:
    """`--set` overrides that multiply every expert's budget by `factor`: the recipe's `max_epochs`
    and early-stopping patience, and those a task sets in `task_training`.

    Args:
        recipe: the loaded recipe (`neuroflow.pipeline.recipe.load_recipe`).
        factor: the budget multiplier.
    """

    def scaled(prefix: str, epochs: int, early_stopping: dict[str, Any] | None) -> list[str]:
        out = [f"{prefix}.max_epochs={round(epochs * factor)}"]
        if early_stopping is not None:
            patience = int(early_stopping.get("patience", 3))
            out.append(f"{prefix}.early_stopping.patience={max(1, round(patience * factor))}")
        return out

    sets = scaled("training", recipe.training.max_epochs, recipe.training.early_stopping)
    for task, overlay in recipe.task_training.items():
        # A task's own budget scales from its own values; one it inherits follows `training`.
        if "max_epochs" in overlay or "early_stopping" in overlay:
            own = recipe.expert_training(task)
            sets += scaled(f"task_training.{task}", own.max_epochs, own.early_stopping)
    return sets
