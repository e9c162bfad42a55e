"""The `python -m neuroflow run <recipe.yaml>` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from neuroflow.commands.cli import check_config
from neuroflow.commands.cli import main as cli_main
from neuroflow.commands.logs import configure_logging, ensure_configured, pop_global_flags
from neuroflow.pipeline.launch import StageFailed, write_config
from neuroflow.pipeline.recipe import RecipeError, load_recipe
from neuroflow.pipeline.runner import STAGE_GROUPS, PipelineRunner
from neuroflow.pipeline.slurm import render_slurm

log = logging.getLogger(__name__)
PROG = "python -m neuroflow run"


def stage_main(args: list[str]) -> None:
    """Run one stage's command line in this process: `stats` (the statistics pass of RegMean /
    Fisher merging) is a command of its own, `fit|test|merge` are LightningCLI's."""
    if args and args[0] == "stats":
        from neuroflow.statistics.command import main as stats_main

        stats_main(args[1:])
        return
    cli_main(args)


def check_stage(command: str, config: dict[str, Any], extra_args: list[str] | None = None) -> None:
    """Check a stage config as its command parses it (see `neuroflow.commands.cli.check_config`).

    Raises:
        UsageError: the config does not parse (one-line message naming the key).
    """
    if command != "stats":
        check_config(command, config, extra_args)
        return
    from neuroflow.commands.errors import UsageError
    from neuroflow.statistics.command import build_parser as stats_parser

    parser = stats_parser()
    parser.exit_on_error = False
    try:
        parser.parse_object(config)
    except Exception as err:  # jsonargparse raises ArgumentError (or a subclass) on a bad key/value
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"stats config: {first}", str(err)) from err


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run a recipe end to end: fit one expert per task (skipping those already in the "
        "manifest, resuming an interrupted fit), optionally the joint multi-task model, evaluate the "
        "baselines, merge with every method, and write the combined report (report.{json,md,png}, "
        "summary.md) in the recipe's output_dir. Every stage's config is checked before the first "
        "runs. With --slurm-out, render SLURM scripts instead of running.",
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
                        help="retrain experts already in the manifest (an interrupted fit starts over too) "
                        "and rerun every evaluation")
    parser.add_argument("--only", default=None,
                        help=f"comma-separated stage groups to run, from {','.join(STAGE_GROUPS)}")
    parser.add_argument("--launcher", choices=["inprocess", "subprocess"], default=None,
                        help="run stages in this process or as child processes (default: the recipe's)")
    # Both spellings: the other commands write `--output_dir`, shell tools `--output-dir`.
    parser.add_argument("--output-dir", "--output_dir", dest="output_dir", default=None,
                        help="override the recipe's output_dir")
    parser.add_argument("--slurm-out", "--slurm_out", dest="slurm_out", default=None, metavar="DIR",
                        help="write SLURM scripts (job array of fits + dependent merge/eval job, submit.sh) "
                        "to DIR and exit")
    parser.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                        help="resolve the recipe, write and check the stage configs and list the stages; "
                        "run nothing")
    parser.add_argument("--quiet", action="store_true", help="warnings and errors only, no progress")
    parser.add_argument("--verbose", action="store_true", help="debug lines, and the full details of errors")
    return parser


def _fail(message: str, code: int, err: BaseException | None = None) -> None:
    log.error("%s: error: %s", PROG, message)
    if err is not None and log.isEnabledFor(logging.DEBUG):
        log.debug("traceback:", exc_info=err)
    raise SystemExit(code) from err


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """Entry point of `python -m neuroflow run`; stages run through `neuroflow.commands.cli.main`.

    Exit status 2 for a recipe (or a stage config) that cannot run, 1 for a stage that failed.
    """
    raw = list(sys.argv[1:] if argv is None else argv)
    rest, level = pop_global_flags(raw)
    # The entry point took --quiet/--verbose out already; a direct caller's are applied here.
    if level is not None:
        configure_logging(level)
    else:
        ensure_configured()
    args = build_parser().parse_args(rest)
    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    try:
        subset = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
        recipe = load_recipe(args.recipe, overrides=overrides, override_files=args.override_files, tasks=subset)
        only = [g.strip() for g in args.only.split(",") if g.strip()] if args.only else None
        runner = PipelineRunner(recipe, force=args.force, only=only, launcher=args.launcher, entry_point=stage_main,
                                validator=check_stage)
        if args.slurm_out or args.dry_run:
            # A real run checks its stages itself; these only write configs, so check them here.
            runner.check(runner.planner.stages() if args.slurm_out else None)
    except (RecipeError, ValueError) as err:
        _fail(str(err), 2, err)
    if args.slurm_out:
        written = render_slurm(recipe, runner.planner, args.slurm_out)
        for path in written.values():
            print(f"wrote {path}")
        print(f"submit with: bash {written['submit.sh']}")
        return None
    if args.dry_run:
        for stage in runner.planner.stages():
            path = write_config(stage, runner.planner.config_dir)
            print(f"{stage.name:28s} python -m neuroflow {stage.command} --config {path}")
        return None
    runner.state["command"] = "python -m neuroflow run " + " ".join(raw)
    try:
        return runner.run()
    except RecipeError as err:  # a stage config that would fail, found before anything ran
        _fail(str(err), 2, err)
    except StageFailed as err:
        _fail(f"{err}\nFinished stages are kept: rerun the same command to continue.", 1, err)
    return None
