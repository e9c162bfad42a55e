"""`python -m neuroflow analyze EXPERTS [--tasks a,b] [--mask_rate 0.8] [--out DIR]`.

Writes `analysis.json` (every number), `analysis.md` (findings and tables: `summary.py`) and
`analysis.png` (heatmaps: `plots.py`) into `--out`, each atomically, and prints the markdown.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from neuroflow.analysis.experts import analyze_experts
from neuroflow.analysis.plots import plot_analysis
from neuroflow.analysis.summary import render_markdown
from neuroflow.atomic import atomic_write, atomic_write_text

DEFAULT_OUT = "runs/analysis"


def write_analysis(analysis: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write `analysis.{json,md,png}` into `out_dir` (created); returns their paths.

    Args:
        analysis: an analysis dict.
        out_dir: the output directory.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {kind: out / f"analysis.{kind}" for kind in ("json", "md", "png")}
    atomic_write_text(paths["json"], json.dumps(analysis, indent=1) + "\n")
    atomic_write_text(paths["md"], render_markdown(analysis, image=paths["png"].name))
    atomic_write(paths["png"], lambda p: plot_analysis(analysis, p))
    return paths


def parser() -> argparse.ArgumentParser:
    """The command's argument parser."""
    p = argparse.ArgumentParser(
        prog="python -m neuroflow analyze",
        description="Per layer and task: update energy parallel/orthogonal to the pre-trained neurons, sign "
                    "conflicts, overlap of the trimmed masks and task-vector cosines of a set of experts.",
    )
    p.add_argument("experts", nargs="+", help="an experts directory (its manifest), or expert folders")
    p.add_argument("--tasks", default=None, help="comma-separated tasks to analyse (default: every expert's)")
    p.add_argument("--mask_rate", type=float, default=0.8,
                   help="fraction of each task vector trimmed by magnitude, as TIES/NeuroMerging (default 0.8)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    p.add_argument("--exclude", action="append", default=None, metavar="GLOB",
                   help="backbone tensors to leave out, as the merge's exclude (repeatable)")
    p.add_argument("--quiet", action="store_true", help="do not print the summary")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the analysis command.

    Args:
        argv: the arguments after `analyze` (None = `sys.argv[1:]`).

    Returns:
        the analysis, with `files` (the written paths) added.
    """
    args = parser().parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    experts = args.experts[0] if len(args.experts) == 1 else args.experts
    analysis = analyze_experts(experts, tasks=tasks, mask_rate=args.mask_rate, exclude=args.exclude)
    paths = write_analysis(analysis, args.out)
    if not args.quiet:
        print(render_markdown(analysis, image=None), end="")
        print(f"\nanalysis written to {Path(args.out)} (analysis.json, analysis.md, analysis.png)", file=sys.stderr)
    return {**analysis, "files": {kind: str(path) for kind, path in paths.items()}}


if __name__ == "__main__":
    main()
