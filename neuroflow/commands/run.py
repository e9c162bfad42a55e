"""The `python -m neuroflow run <recipe.yaml>` command line."""

from __future__ import annotations

import argparse
import sys
import traceback
from typing import Any

from neuroflow.commands.cli import main as cli_main
from neuroflow.pipeline.launch import StageFailed, write_config
from neuroflow.pipeline.recipe import RecipeError, load_recipe
from neuroflow.pipeline.runner import STAGE_GROUPS, PipelineRunner
from neuroflow.pipeline.slurm import render_slurm


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m neuroflow run",
        description="Run a recipe end to end: fit one expert per task (skipping those already in the "
        "manifest), optionally the joint multi-task model, evaluate the baselines, merge with every "
        "method, and write the combined report (report.{json,md,png}, summary.md) in the recipe's "
        "output_dir. With --slurm-out, render SLURM scripts instead of running.",
    )
    parser.add_argument("recipe", help="the recipe YAML (see recipes/ and docs/recipes.md)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe field (dotted key, repeatable), e.g. --set caps.train=500 "
                        "--set backbone=/models/tiny")
    parser.add_argument("--override", dest="override_files", action="append", default=[], metavar="YAML",
                        help="a YAML file deep-merged over the recipe (repeatable), e.g. to point tasks at "
                        "local files")
    parser.add_argument("--tasks", default=None,
                        help="comma-separated subset of the recipe's tasks to run (default: all)")
    parser.add_argument("--force", action="store_true",
                        help="retrain experts already in the manifest and rerun every evaluation")
    parser.add_argument("--only", default=None,
                        help=f"comma-separated stage groups to run, from {','.join(STAGE_GROUPS)}")
    parser.add_argument("--launcher", choices=["inprocess", "subprocess"], default=None,
                        help="run stages in this process or as child processes (default: the recipe's)")
    parser.add_argument("--output-dir", default=None, help="override the recipe's output_dir")
    parser.add_argument("--slurm-out", default=None, metavar="DIR",
                        help="write SLURM scripts (job array of fits + dependent merge/eval job, submit.sh) "
                        "to DIR and exit")
    parser.add_argument("--dry-run", action="store_true",
                        help="resolve the recipe, write the stage configs and list the stages; run nothing")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """Entry point of `python -m neuroflow run`; stages run through `neuroflow.commands.cli.main`."""
    args = build_parser().parse_args(argv)
    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    try:
        subset = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
        recipe = load_recipe(args.recipe, overrides=overrides, override_files=args.override_files, tasks=subset)
        only = [g.strip() for g in args.only.split(",") if g.strip()] if args.only else None
        runner = PipelineRunner(recipe, force=args.force, only=only, launcher=args.launcher, entry_point=cli_main)
    except (RecipeError, ValueError) as err:
        print(f"neuroflow run: error: {err}", file=sys.stderr)
        raise SystemExit(2) from err
    if args.slurm_out:
        written = render_slurm(recipe, runner.planner, args.slurm_out)
        for name, path in written.items():
            print(f"wrote {path}")
        print(f"submit with: bash {written['submit.sh']}")
        return None
    if args.dry_run:
        for stage in runner.planner.stages():
            path = write_config(stage, runner.planner.config_dir)
            print(f"{stage.name:28s} python -m neuroflow {stage.command} --config {path}")
        return None
    runner.state["command"] = "python -m neuroflow run " + " ".join(argv if argv is not None else sys.argv[1:])
    try:
        return runner.run()
    except StageFailed as err:
        traceback.print_exc()
        print(f"neuroflow run: error: {err}\nFinished stages are kept: rerun the same command to continue.",
              file=sys.stderr)
        raise SystemExit(1) from err
