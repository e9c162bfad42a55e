"""`python -m neuroflow.data [TASK ...]`: load tasks and print their splits, sizes and class balance.

The quickest check of a new task YAML: it runs the same loading path as training (files,
columns, labels, made splits, caps) and shows what came out.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import numpy as np

from neuroflow.data.loading import load_task
from neuroflow.data.registry import known_tasks, resolve_task
from neuroflow.data.task_spec import SPLITS, TaskSpec


def summarize_task(spec: TaskSpec, data_dir: str | None = None) -> dict[str, Any]:
    """Sizes and class balance of each split of a task, after its splits and caps.

    Args:
        spec: the task.
        data_dir: base of relative data file paths (default `neuroflow.hub.default_data_dir()`).

    Returns:
        `{"task", "kind", "classes", "metrics", "splits": {split: {"size", "class_counts"}}}`.
    """
    loaded = load_task(spec, data_dir)
    splits = {}
    for split in SPLITS:
        counts = np.bincount(np.asarray(loaded[split]["label"]), minlength=spec.num_labels)
        splits[split] = {"size": int(counts.sum()), "class_counts": counts.tolist()}
    return {"task": spec.name, "kind": spec.kind, "classes": spec.num_labels, "metrics": list(spec.metrics),
            "splits": splits}


def format_summary(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of `summarize_task` results (minority/majority class share per split)."""
    lines = ["| task | kind | classes | train | validation | test | class share min-max (train) | metrics |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        train = np.asarray(r["splits"]["train"]["class_counts"], dtype=float)
        share = train / max(train.sum(), 1)
        sizes = [str(r["splits"][s]["size"]) for s in SPLITS]
        lines.append(f"| {r['task']} | {r['kind']} | {r['classes']} | {' | '.join(sizes)} | "
                     f"{share.min():.3f}-{share.max():.3f} | {', '.join(r['metrics'])} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m neuroflow.data", description=__doc__.splitlines()[0])
    parser.add_argument("tasks", nargs="*", help="task names or YAML paths (default: every known task)")
    parser.add_argument("--data_dir", default=None, help="base of relative data file paths")
    parser.add_argument("--task_dirs", nargs="*", default=None, help="extra directories of task YAML files")
    args = parser.parse_args(argv)
    names = args.tasks or known_tasks(args.task_dirs)
    rows = [summarize_task(resolve_task(n, args.task_dirs), args.data_dir) for n in names]
    print(format_summary(rows))
