"""The pipeline's results table: one row per evaluated model, one column per task.

The combined report (`neuroflow.evaluation.report.combine_reports`) is task-major; a recipe's
readers compare models, so the pipeline prints it transposed, with the average primary metric and
the average normalized score (model / expert) as the last columns.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def rename_runs(combined: Mapping[str, Any], names: list[str]) -> dict[str, Any]:
    """The combined report with its runs renamed, in order (reports name themselves after the
    method, e.g. `dare`; the pipeline names rows after the recipe, e.g. `dare_ties_val`)."""
    out = copy.deepcopy(dict(combined))
    old = [run["name"] for run in out["runs"]]
    if len(old) != len(names) or len(set(names)) != len(names):
        raise ValueError(f"rename_runs: {len(names)} unique names needed for runs {old}, got {names}")
    mapping = dict(zip(old, names))
    for run in out["runs"]:
        run["report_name"] = run["name"]
        run["name"] = mapping[run["name"]]
    for row in out["tasks"].values():
        row["runs"] = {mapping[k]: v for k, v in row["runs"].items()}
    out["average"]["runs"] = {mapping[k]: v for k, v in out["average"]["runs"].items()}
    return out


def renormalize(combined: Mapping[str, Any], reference: str) -> dict[str, Any]:
    """Normalized scores of every run against one run's per-task values (the individual experts).

    Each evaluation normalizes by whatever expert numbers it had (recorded, or evaluated, or none
    for the pre-trained row); against one reference row every run of the table is comparable. The
    reference's values also become the table's `expert` column. Without that run, unchanged.
    """
    out = copy.deepcopy(dict(combined))
    if reference not in {run["name"] for run in out["runs"]}:
        return out
    for row in out["tasks"].values():
        ref = row["runs"].get(reference, {}).get("value")
        row["expert"] = ref
        for run in row["runs"].values():
            ok = ref is not None and run["value"] is not None and ref > 0 and math.isfinite(run["value"])
            run["normalized"] = run["value"] / ref if ok else None
    for name, avg in out["average"]["runs"].items():
        values = [row["runs"][name]["normalized"] for row in out["tasks"].values() if name in row["runs"]]
        kept = [v for v in values if v is not None]
        avg["normalized"] = sum(kept) / len(kept) if kept else None
    refs = [row["expert"] for row in out["tasks"].values() if row["expert"] is not None]
    out["average"]["expert"] = sum(refs) / len(refs) if refs else None
    out["normalized_by"] = reference
    return out


def rows_table_data(combined: Mapping[str, Any]) -> list[dict[str, Any]]:
    """[{name, tasks: {task: value}, average, normalized}] in the combined report's run order."""
    rows = []
    for run in combined["runs"]:
        name = run["name"]
        values = {task: row["runs"].get(name, {}).get("value") for task, row in combined["tasks"].items()}
        avg = combined["average"]["runs"][name]
        uses_data = bool((run.get("model") or {}).get("uses_data"))
        rows.append({"name": name, "tasks": values, "average": avg["score"], "normalized": avg["normalized"],
                     "uses_data": uses_data})
    return rows


def render_rows_table(combined: Mapping[str, Any], title: str = "") -> str:
    """Markdown: model rows x (each task's primary metric in %, average %, average normalized)."""
    tasks = list(combined["tasks"])
    metrics = [combined["tasks"][t]["primary_metric"] for t in tasks]
    header = ["model", *[f"{t} ({m})" for t, m in zip(tasks, metrics)], "avg", "avg norm."]
    lines = [f"### {title}", ""] if title else []
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = rows_table_data(combined)
    for row in rows:
        name = row["name"] + (" (uses training data)" if row["uses_data"] else "")
        cells = [name, *[_pct(row["tasks"][t]) for t in tasks], _pct(row["average"]), _ratio(row["normalized"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Metrics in %; `avg norm.` = mean over tasks of model / individual expert (primary metric)."]
    if any(row["uses_data"] for row in rows):
        lines.append("Rows marked \"uses training data\" (RegMean, Fisher merging) read statistics of each expert's "
                     "training data: a stronger setting than the data-free merges, not a like-for-like comparison.")
    return "\n".join(lines) + "\n"
