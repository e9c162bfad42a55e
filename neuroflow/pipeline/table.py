"""The pipeline's results table: one row per evaluated model, one column per task.

The combined report (`neuroflow.evaluation.report.combine_reports`) is task-major; a recipe's
readers compare models, so the pipeline prints it transposed, with the average primary metric and
the average normalized score (model / expert) as the last columns.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def rows_table_data(combined: Mapping[str, Any]) -> list[dict[str, Any]]:
    """[{name, tasks: {task: value}, average, normalized}] in the combined report's run order."""
    rows = []
    for run in combined["runs"]:
        name = run["name"]
        values = {task: row["runs"].get(name, {}).get("value") for task, row in combined["tasks"].items()}
        avg = combined["average"]["runs"][name]
        rows.append({"name": name, "tasks": values, "average": avg["score"], "normalized": avg["normalized"]})
    return rows


def render_rows_table(combined: Mapping[str, Any], title: str = "") -> str:
    """Markdown: model rows x (each task's primary metric in %, average %, average normalized)."""
    tasks = list(combined["tasks"])
    metrics = [combined["tasks"][t]["primary_metric"] for t in tasks]
    header = ["model", *[f"{t} ({m})" for t, m in zip(tasks, metrics)], "avg", "avg norm."]
    lines = [f"### {title}", ""] if title else []
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows_table_data(combined):
        cells = [row["name"], *[_pct(row["tasks"][t]) for t in tasks], _pct(row["average"]),
                 _ratio(row["normalized"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Metrics in %; `avg norm.` = mean over tasks of model / individual expert (primary metric)."]
    return "\n".join(lines) + "\n"
