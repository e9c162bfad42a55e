"""Evaluation reports: `report.json`, `report.md` and `report.png`, and combining several runs.

A report scores one evaluated model (a merged model, the experts, or the pre-trained backbone) on
every task and relates it to the task's expert: the *normalized score* of a task is the model's
primary metric divided by the expert's (1.0 = as good as the expert). Each task also records its
number of examples `n` and a 95% interval of the primary metric (`report_stats`), and reports warn
where the scale misleads (a merge above its expert, an expert no better than the pre-trained
backbone). Several runs' reports combine into one table:

    python -m neuroflow.evaluation.report combine runs/merged/neuromerging runs/merged/ties --out runs/report
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from neuroflow.atomic import atomic_write
from neuroflow.evaluation.report_stats import (
    above_one_warnings,
    mean_interval,
    scaled,
    task_interval,
    weak_expert_warnings,
)
from neuroflow.merging.search import normalized_score  # noqa: F401 (re-exported)

REPORT_FORMAT = "neuroflow-report/1"
COMBINED_FORMAT = "neuroflow-combined-report/1"
REPORT_FILES = ("report.json", "report.md", "report.png")

# Lightning appends this to keys logged from the 2nd..Nth dataloader unless the module logs with
# add_dataloader_idx=False; accept both so reports don't depend on how a module logs.
_DATALOADER_SUFFIX = re.compile(r"/dataloader_idx_\d+$")


def metrics_from_logged(
    logged: Mapping[str, Any], stage: str, tasks: list[str]
) -> dict[str, dict[str, float]]:
    """Per-task metrics from logged values named `{stage}/{task}/{metric}`.

    Args:
        logged: e.g. `trainer.callback_metrics` or the dicts `Trainer.test` returns, merged.
        stage: `val` or `test`.
        tasks: the task names to collect; a task with no logged metric is an error.

    Raises:
        KeyError: a task of `tasks` has no `{stage}/{task}/...` value.
    """
    out: dict[str, dict[str, float]] = {task: {} for task in tasks}
    for key, value in logged.items():
        key = _DATALOADER_SUFFIX.sub("", key)
        parts = key.split("/")
        if len(parts) != 3 or parts[0] != stage or parts[1] not in out:
            continue
        out[parts[1]][parts[2]] = float(value)
    missing = [task for task, values in out.items() if not values]
    if missing:
        known = sorted(k for k in logged if k.startswith(f"{stage}/"))
        raise KeyError(f"no logged {stage} metrics for task(s) {missing}; logged keys: {known}")
    return out


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None and math.isfinite(v)]
    return sum(kept) / len(kept) if kept else None


def build_report(
    name: str,
    task_metrics: Mapping[str, Mapping[str, float]],
    primary: Mapping[str, str],
    expert_metrics: Mapping[str, Mapping[str, float]] | None = None,
    expert_source: Mapping[str, str] | None = None,
    split: str = "test",
    model: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    confusions: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble the report dictionary (the content of `report.json`).

    Args:
        name: the row's name in tables (e.g. `neuromerging`, `experts`, `pretrained`).
        task_metrics: task -> metric name -> value, for the evaluated model.
        primary: task -> its primary metric (the first of `TaskSpec.metrics`).
        expert_metrics: task -> metric name -> value, for the task's own expert (same split).
        expert_source: task -> where the expert's numbers come from (`manifest` or `evaluated`).
        split: the evaluated split (`test` or `validation`).
        model: what was evaluated (kind, method, hyperparameters, paths), stored as is.
        extra: more top-level entries (e.g. the validation search), stored as is.
        confusions: task -> confusion matrix `cm[target][pred]` of the evaluated model (see
            `report_stats.confusions_of`): gives each task's `n` and 95% `interval`.
    """
    expert_metrics = expert_metrics or {}
    confusions = confusions or {}
    expert_source = expert_source or {}
    tasks: dict[str, Any] = {}
    for task, values in task_metrics.items():
        metric = primary[task]
        if metric not in values:
            raise KeyError(f"task {task!r}: primary metric {metric!r} not among {sorted(values)}")
        expert = dict(expert_metrics.get(task, {}))
        confusion = confusions.get(task)
        interval = task_interval(metric, float(values[metric]), confusion)
        normalized = normalized_score(values[metric], expert.get(metric))
        bounds = scaled(interval, expert.get(metric)) if normalized is not None else None
        tasks[task] = {
            "primary_metric": metric,
            "metrics": {k: float(v) for k, v in values.items()},
            "expert": {k: float(v) for k, v in expert.items()},
            "expert_source": expert_source.get(task) if expert else None,
            "normalized": normalized,
            "n": int(round(sum(map(sum, confusion)))) if confusion is not None else None,
            "interval": interval,
            "normalized_interval": list(bounds) if bounds else None,
        }
    metric_names = sorted({m for entry in tasks.values() for m in entry["metrics"]})
    average = {
        "metrics": {m: _mean([e["metrics"].get(m) for e in tasks.values()]) for m in metric_names},
        "score": _mean([e["metrics"][e["primary_metric"]] for e in tasks.values()]),
        "expert_score": _mean([e["expert"].get(e["primary_metric"]) for e in tasks.values()]),
        "normalized": _mean([e["normalized"] for e in tasks.values()]),
        "normalized_tasks": sum(e["normalized"] is not None for e in tasks.values()),
    }
    kept = [(e["normalized"], e["normalized_interval"]) for e in tasks.values() if e["normalized"] is not None]
    bounds = mean_interval(kept)
    average["normalized_interval"] = list(bounds) if bounds else None
    report: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "name": name,
        "split": split,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": dict(model or {}),
        "tasks": tasks,
        "average": average,
    }
    report.update(extra or {})
    return report


def _fmt(value: float | None, percent: bool = True) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.2f}" if percent else f"{value:.4f}"


def render_markdown(report: Mapping[str, Any]) -> str:
    """One report as a Markdown table (metrics in %, normalized score as a ratio)."""
    lines = [f"# {report['name']} ({report['split']})", ""]
    lines += _warning_lines(report.get("warnings") or report_warnings(report))
    lines += [
        "| task | metric | model | expert | normalized | n | model 95% | normalized 95% |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task, entry in report["tasks"].items():
        for metric, value in entry["metrics"].items():
            is_primary = metric == entry["primary_metric"]
            stats = (f" {_count(entry.get('n'))} | {_bounds(entry.get('interval'))} | "
                     f"{_bounds(entry.get('normalized_interval'), percent=False)} |") if is_primary else " | | |"
            lines.append(
                f"| {task} | {metric}{' *' if is_primary else ''} | {_fmt(value)} | "
                f"{_fmt(entry['expert'].get(metric))} | "
                f"{_fmt(entry['normalized'], percent=False) if is_primary else ''} |{stats}"
            )
    avg = report["average"]
    total = [e.get("n") for e in report["tasks"].values()]
    lines.append(
        f"| **average** | primary | {_fmt(avg['score'])} | {_fmt(avg['expert_score'])} | "
        f"{_fmt(avg['normalized'], percent=False)} | {_count(sum(total) if None not in total else None)} | | "
        f"{_bounds(avg.get('normalized_interval'), percent=False)} |"
    )
    lines += ["", "`*` primary metric; normalized = model / expert on the primary metric; n = examples; "
              "95% intervals: Wilson (accuracy) or bootstrap (F1, MCC), the expert's score taken as fixed."]
    search = report.get("search")
    if search:
        lines += ["", "## Validation search", "", "| candidate | avg normalized (val) |", "|---|---|"]
        for cand in search["candidates"]:
            mark = " **(best)**" if cand["params"] == search["best"]["params"] else ""
            lines.append(f"| `{json.dumps(cand['params'])}`{mark} | {_fmt(cand['score'], False)} |")
    if report.get("analysis_md"):
        # The merge command's neuron-subspace analysis of the experts (analysis.json beside it).
        lines += ["", report["analysis_md"].rstrip()]
    return "\n".join(lines) + "\n"


def _count(n: int | None) -> str:
    return "-" if n is None else str(n)


def _bounds(bounds: Any, percent: bool = True) -> str:
    if not bounds:
        return "-"
    low, high = (bounds["low"], bounds["high"]) if isinstance(bounds, Mapping) else bounds
    return f"{_fmt(low, percent)}-{_fmt(high, percent)}" if percent else f"{low:.3f}-{high:.3f}"


def _warning_lines(warnings: list[Mapping[str, Any]]) -> list[str]:
    return [f"> **Warning:** {w['message']}" for w in warnings] + ([""] if warnings else [])


def report_warnings(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Where a report's normalized scores mislead (see `report_stats`): a merge above its expert
    on a task; in a combined report also an expert not clearly better than the pre-trained row."""
    if report.get("format") != COMBINED_FORMAT:
        if report.get("model", {}).get("kind") != "merged":
            return []
        return above_one_warnings(report["name"], {
            t: (e["normalized"], tuple(e["normalized_interval"]) if e.get("normalized_interval") else None)
            for t, e in report["tasks"].items()})
    kinds = {run["name"]: run.get("model", {}).get("kind") for run in report["runs"]}
    out: list[dict[str, Any]] = []
    for name, kind in kinds.items():
        if kind == "merged":
            out += above_one_warnings(name, {
                t: (row["runs"][name]["normalized"], scaled(row["runs"][name].get("interval"), row["expert"]))
                for t, row in report["tasks"].items() if name in row["runs"]})
    pretrained = next((n for n, k in kinds.items() if k == "pretrained"), None)
    experts = next((n for n, k in kinds.items() if k == "experts"), None)
    if pretrained is not None:
        rows = {}
        for task, row in report["tasks"].items():
            base, own = row["runs"].get(pretrained), row["runs"].get(experts) if experts else None
            rows[task] = {"expert": row["expert"], "expert_interval": (own or {}).get("interval"),
                          "pretrained": base["value"] if base else None,
                          "pretrained_interval": base.get("interval") if base else None}
        out += weak_expert_warnings(rows, pretrained)
    return out


def write_report(report: Mapping[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write `report.json`, `report.md` and `report.png` into `out_dir` (each atomically).

    Args:
        report: a dictionary from `build_report` (or `combine_reports`).
        out_dir: the run's output directory (created if missing).
    """
    from neuroflow.evaluation.report_chart import draw_report

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {kind: out / f"report.{kind}" for kind in ("json", "md", "png")}
    # Recomputed on every write: a combined report may have been renormalized since it was built.
    report = {**report, "warnings": report_warnings(report)}
    atomic_write(paths["json"], lambda p: p.write_text(json.dumps(report, indent=2) + "\n"))
    combined = report.get("format") == COMBINED_FORMAT
    markdown = render_combined_markdown(report) if combined else render_markdown(report)
    atomic_write(paths["md"], lambda p: p.write_text(markdown))
    atomic_write(paths["png"], lambda p: draw_report(report, p, combined))
    return paths


def load_report(path: str | Path) -> dict[str, Any]:
    """Read a run's `report.json` (`path` is the file or the run directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    if not path.is_file():
        raise FileNotFoundError(f"no report at {path}")
    report = json.loads(path.read_text())
    if report.get("format") != REPORT_FORMAT:
        raise ValueError(f"{path}: not a neuroflow report (format {report.get('format')!r})")
    return report


def combine_reports(runs: list[str | Path]) -> dict[str, Any]:
    """Combine several runs' reports into one table: a row per task, a column per run.

    The expert column comes from the first run that has expert numbers for a task. Runs with the
    same name get `#2`, `#3` suffixes.

    Args:
        runs: run directories (or `report.json` files), in column order.
    """
    if not runs:
        raise ValueError("combine: give at least one run directory")
    reports = [load_report(run) for run in runs]
    names: list[str] = []
    for report in reports:
        name, n = report["name"], 2
        while name in names:
            name, n = f"{report['name']}#{n}", n + 1
        names.append(name)
    tasks = list(dict.fromkeys(t for r in reports for t in r["tasks"]))
    rows: dict[str, Any] = {}
    for task in tasks:
        expert = next(
            (r["tasks"][task]["expert"] for r in reports if task in r["tasks"] and r["tasks"][task]["expert"]),
            {},
        )
        primary = next(r["tasks"][task]["primary_metric"] for r in reports if task in r["tasks"])
        rows[task] = {
            "primary_metric": primary,
            "expert": expert.get(primary),
            "runs": {
                n: {"value": r["tasks"][task]["metrics"][primary], "normalized": r["tasks"][task]["normalized"],
                    "n": r["tasks"][task].get("n"), "interval": r["tasks"][task].get("interval")}
                for n, r in zip(names, reports)
                if task in r["tasks"]
            },
        }
    averages = {
        n: {"score": r["average"]["score"], "normalized": r["average"]["normalized"]}
        for n, r in zip(names, reports)
    }
    return {
        "format": COMBINED_FORMAT,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "runs": [{"name": n, "dir": str(Path(run)), "split": r["split"], "model": r["model"]}
                 for n, run, r in zip(names, runs, reports)],
        "tasks": rows,
        "average": {"expert": _mean([row["expert"] for row in rows.values()]), "runs": averages},
    }


def render_combined_markdown(combined: Mapping[str, Any]) -> str:
    """A combined report as a Markdown table: primary metric in %, normalized score in brackets."""
    from neuroflow.evaluation.report_chart import normalized_table

    names = [run["name"] for run in combined["runs"]]
    lines = _warning_lines(combined.get("warnings") or report_warnings(combined))
    lines += [
        "| task | metric | expert | " + " | ".join(names) + " | n |",
        "|---|---|---|" + "---|" * len(names) + "---|",
    ]
    for task, row in combined["tasks"].items():
        cells = []
        for n in names:
            run = row["runs"].get(n)
            cells.append("-" if run is None else f"{_fmt(run['value'])} ({_fmt(run['normalized'], False)})")
        counts = sorted({run.get("n") for run in row["runs"].values() if run.get("n") is not None})
        lines.append(f"| {task} | {row['primary_metric']} | {_fmt(row['expert'])} | " + " | ".join(cells)
                     + f" | {'/'.join(map(str, counts)) or '-'} |")
    avg = combined["average"]
    cells = [f"{_fmt(avg['runs'][n]['score'])} ({_fmt(avg['runs'][n]['normalized'], False)})" for n in names]
    lines.append(f"| **average** | | {_fmt(avg['expert'])} | " + " | ".join(cells) + " | |")
    lines += ["", "Primary metric in %; in brackets the normalized score (model / expert); n = examples."]
    table = normalized_table(combined)
    lines += ["", "Normalized score with its 95% interval (Wilson for accuracy, bootstrap otherwise; "
              "the expert's score taken as fixed; averages combine the tasks' intervals):", "",
              "| model | " + " | ".join(table["tasks"]) + " | average |",
              "|---|" + "---|" * (len(table["tasks"]) + 1)]
    for row in table["rows"]:
        cells = [_norm_cell(v, b) for v, b in zip(row["values"], row["bounds"])]
        lines.append(f"| {row['name']} | " + " | ".join(cells) + f" | {_norm_cell(row['average'], row['average_bounds'])} |")
    return "\n".join(lines) + "\n"


def _norm_cell(value: float | None, bounds: tuple[float, float] | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" + (f" [{bounds[0]:.3f}, {bounds[1]:.3f}]" if bounds else "")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """`python -m neuroflow.evaluation.report combine RUN [RUN ...] --out DIR`."""
    parser = argparse.ArgumentParser(prog="python -m neuroflow.evaluation.report")
    sub = parser.add_subparsers(dest="command", required=True)
    combine = sub.add_parser("combine", help="combine several runs' reports into one table")
    combine.add_argument("runs", nargs="+", help="run directories holding a report.json")
    combine.add_argument("--out", required=True, help="directory for the combined report.{json,md,png}")
    args = parser.parse_args(argv)
    combined = combine_reports(args.runs)
    write_report(combined, args.out)
    print(render_combined_markdown(combined), end="")
    return combined


if __name__ == "__main__":
    main()
