"""Copy a finished recipe run into `benchmarks/results/`: the table, the JSON, and how it was made.

    python benchmarks/collect_results.py runs/text8 --name text8

writes `benchmarks/results/<name>.json` (the combined report with every row's per-task metrics,
the validation searches' candidates, the recipe, seed, package versions, per-stage wall times and
the command) and `benchmarks/results/<name>_table.md` (the results table and the stage timings).
The analysis (`<name>.md`) is written by hand from these.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

from neuroflow.evaluation.report import load_report
from neuroflow.pipeline.table import render_rows_table

HERE = Path(__file__).resolve().parent


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def _searches(combined: dict[str, Any]) -> dict[str, Any]:
    """Row -> the validation search (candidates and best) recorded in that row's report."""
    out = {}
    for run in combined["runs"]:
        report = load_report(run["dir"])
        if report.get("search"):
            search = report["search"]
            out[run["name"]] = {
                "best": search["best"],
                "candidates": [{"params": c["params"], "score": c["score"]} for c in search["candidates"]],
            }
    return out


def timings_markdown(state: dict[str, Any]) -> str:
    lines = ["| stage | wall time (s) |", "|---|---|"]
    total = 0.0
    for name, record in state["stages"].items():
        wall = record.get("wall_s")
        total += wall or 0.0
        lines.append(f"| {name} | {wall if wall is not None else '-'} |")
    lines.append(f"| **total** | {total:.1f} |")
    return "\n".join(lines) + "\n"


def collect(run_dir: str | Path, name: str, out_dir: str | Path = HERE / "results") -> dict[str, Path]:
    """Write `<name>.json` and `<name>_table.md` for the run in `run_dir`.

    Args:
        run_dir: the recipe's output_dir (holding report.json and pipeline_state.json).
        name: file stem under `out_dir`.
        out_dir: destination (default benchmarks/results).

    Raises:
        FileNotFoundError: the run has no combined report or pipeline state yet.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    report_path, state_path = run_dir / "report.json", run_dir / "pipeline_state.json"
    for path in (report_path, state_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: run `python -m neuroflow run <recipe>` to the end first")
    combined = json.loads(report_path.read_text())
    state = json.loads(state_path.read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {
        "name": name,
        "command": state.get("command"),
        "seed": state["recipe"]["seed"],
        "recipe": state["recipe"],
        "versions": state.get("versions"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "stage_wall_s": {k: v.get("wall_s") for k, v in state["stages"].items()},
        "table": [
            {"model": run["name"],
             **{task: row["runs"].get(run["name"], {}).get("value") for task, row in combined["tasks"].items()},
             "average": combined["average"]["runs"][run["name"]]["score"],
             "average_normalized": combined["average"]["runs"][run["name"]]["normalized"]}
            for run in combined["runs"]
        ],
        "primary_metrics": {task: row["primary_metric"] for task, row in combined["tasks"].items()},
        "searches": _searches(combined),
        "combined_report": combined,
    }
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}_table.md"
    _atomic_write(json_path, json.dumps(result, indent=2) + "\n")
    text = render_rows_table(combined, title=f"{name} (test split, seed {result['seed']})")
    text += f"\nCommand: `{result['command']}`\n\n### Wall time per stage\n\n" + timings_markdown(state)
    _atomic_write(md_path, text)
    return {"json": json_path, "md": md_path}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="the recipe's output_dir, e.g. runs/text8")
    parser.add_argument("--name", required=True, help="result file stem, e.g. text8")
    parser.add_argument("--out", default=str(HERE / "results"), help="destination folder")
    args = parser.parse_args(argv)
    for path in collect(args.run_dir, args.name, args.out).values():
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
