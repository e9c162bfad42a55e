"""`python -m neuroflow run <recipe.yaml>`: fit every expert, merge with every method, test, report.

The runner only orchestrates: each stage is a `python -m neuroflow fit|merge|test` run of a config
the planner wrote. It keeps `pipeline_state.json` (config hash, wall time, experts it saw) so a
rerun skips the experts already in the manifest (unless `force`), resumes a fit that was
interrupted from its `last.ckpt`, and skips the evaluations whose config and experts have not
changed. Given a validator (the CLI's `check_config`), every stage config is checked before the
first stage runs, so a wrong class path fails in seconds, not after the experts are trained.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import platform
import shutil
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from neuroflow.atomic import atomic_write_json, atomic_write_text
from neuroflow.pipeline.launch import (
    EntryPoint,
    StageFailed,
    Validator,
    check_stages,
    make_launcher,
    write_config,
)
from neuroflow.pipeline.plan import (
    MULTITASK_ROW,
    REFERENCE_ROW,
    Planner,
    Stage,
    plan_recipe,
)
from neuroflow.pipeline.recipe import Recipe, recipe_to_dict
from neuroflow.pipeline.table import rename_runs, render_rows_table, renormalize

log = logging.getLogger(__name__)

STATE_FILE = "pipeline_state.json"
STAGE_GROUPS = ("fit", "multitask", "baselines", "merge", "report")


def manifest_entries(experts_dir: Path) -> dict[str, dict[str, Any]]:
    """Task -> expert entry of an experts directory (empty when it has none yet)."""
    if not experts_dir.is_dir():
        return {}
    from neuroflow.experts import load_manifest

    try:
        entries = load_manifest(experts_dir)
    except FileNotFoundError:
        return {}
    return {str(e["task"]): dict(e) for e in entries}


def experts_signature(experts_dir: Path) -> str:
    """Changes whenever an expert is added or retrained (used to invalidate evaluations)."""
    entries = manifest_entries(experts_dir)
    blob = json.dumps({t: [e.get("created_at"), e.get("base_fingerprint")] for t, e in sorted(entries.items())})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("neuroflow", "torch", "lightning", "transformers", "peft", "datasets", "torchmetrics"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


class PipelineRunner:
    """Runs a recipe's stages in order and assembles the combined report.

    Args:
        recipe: the checked recipe.
        force: retrain experts (and the joint model) that are already collected, and rerun every
            evaluation.
        only: stage groups to run (`fit`: the experts, `multitask`: the joint model's fit and test,
            `baselines`, `merge`, `report`); all by default.
        launcher: `inprocess` or `subprocess` (default: the recipe's), or a callable for tests.
        echo: where the final table goes (progress goes to the `neuroflow.pipeline` logger).
        entry_point: the CLI's `main` for the `inprocess` launcher (`neuroflow.commands.run` passes
            `neuroflow.commands.cli.main`).
        validator: checks a stage config without running it (`neuroflow.commands.cli.check_config`);
            with it, `run` checks every selected stage first.
    """

    def __init__(
        self,
        recipe: Recipe,
        force: bool = False,
        only: list[str] | None = None,
        launcher: str | Callable[..., None] | None = None,
        echo: Callable[[str], None] = print,
        entry_point: EntryPoint | None = None,
        validator: Validator | None = None,
    ) -> None:
        bad = [g for g in only or [] if g not in STAGE_GROUPS]
        if bad:
            raise ValueError(f"--only: unknown stage group(s) {bad}; choose from {list(STAGE_GROUPS)}")
        self.recipe = recipe
        self.force = force
        self.only = set(only or STAGE_GROUPS)
        name = launcher or recipe.launcher
        self.launch = make_launcher(name, entry_point) if isinstance(name, str) else name
        self.echo = echo
        self.validator = validator
        self.planner: Planner = plan_recipe(recipe)
        self.out = Path(recipe.output_dir)
        self.state_path = self.out / STATE_FILE
        self.state: dict[str, Any] = self._load_state()

    # -- state ---------------------------------------------------------------------------------
    def _load_state(self) -> dict[str, Any]:
        if self.state_path.is_file():
            try:
                return json.loads(self.state_path.read_text())
            except json.JSONDecodeError:
                log.warning("%s is unreadable; starting a fresh state", self.state_path)
        return {"stages": {}}

    def _save_state(self) -> None:
        atomic_write_json(self.state_path, self.state)

    # -- skipping ------------------------------------------------------------------------------
    def _skip_reason(self, stage: Stage) -> str | None:
        if self.force:
            return None
        previous = self.state["stages"].get(stage.name, {})
        if stage.kind == "expert":
            if stage.task in manifest_entries(self.planner.experts_dir):
                if previous.get("config_hash") not in (None, stage.config_hash()):
                    log.warning("%s's config changed since its expert was trained; keeping the expert "
                                "(use --force to retrain)", stage.name)
                return "expert already in the manifest"
            return None
        if stage.kind == "multitask":
            done = previous.get("status") == "done" and self.planner.best_checkpoint(MULTITASK_ROW).is_file()
            return "joint model already trained" if done else None
        same = (
            previous.get("status") == "done"
            and previous.get("config_hash") == stage.config_hash()
            and previous.get("experts") == self._experts_key(stage)
        )
        if stage.kind == "statistics":
            # Up to date while the files it wrote are there (a retrained expert changes the key).
            return "up to date (same config and experts)" if same and self._statistics_present(stage) else None
        done = same and stage.report_dir is not None and (stage.report_dir / "report.json").is_file()
        return "up to date (same config and experts)" if done else None

    def _statistics_present(self, stage: Stage) -> bool:
        from neuroflow.experts import load_experts
        from neuroflow.statistics import statistics_path

        try:
            experts = [e for e in load_experts(self.planner.experts_dir) if e.task == stage.task]
        except (FileNotFoundError, ValueError):
            return False
        kinds = str(stage.config["kinds"]).split(",")
        return bool(experts) and all(statistics_path(e, k).is_file() for e in experts for k in kinds)

    def _experts_key(self, stage: Stage) -> str:
        key = experts_signature(self.planner.experts_dir)
        if stage.row == MULTITASK_ROW:
            ckpt = self.planner.best_checkpoint(MULTITASK_ROW)
            key += f"+{ckpt.stat().st_mtime_ns}" if ckpt.is_file() else "+none"
        return key

    def _group(self, stage: Stage) -> str:
        # The statistics pass belongs to the merges that read it: `--only merge` reruns both. The
        # joint model's test goes with its fit: `--only fit,baselines` (the plateau check) must
        # not test a joint model it never trained.
        if stage.row == MULTITASK_ROW:
            return "multitask"
        return {"expert": "fit", "multitask": "multitask", "baseline": "baselines", "statistics": "merge",
                "merge": "merge"}[stage.kind]

    # -- running -------------------------------------------------------------------------------
    def _check_experts_ready(self) -> None:
        have = manifest_entries(self.planner.experts_dir)
        missing = [t for t in self.recipe.task_names if t not in have]
        if missing:
            raise StageFailed(
                f"experts dir {self.planner.experts_dir} lacks experts for {missing}; run the fit stage "
                f"first (`python -m neuroflow run {self.recipe.source_path} --only fit`)"
            )

    def _resume_or_clean(self, stage: Stage) -> Stage:
        """A fit starts from a clean checkpoint folder (so `best.ckpt` is this run's best), except
        when the same config's last attempt was interrupted: it resumes from `last.ckpt`."""
        checkpoints = self.planner.fit_dir(stage.task or MULTITASK_ROW) / "checkpoints"
        last = checkpoints / "last.ckpt"
        previous = self.state["stages"].get(stage.name, {})
        interrupted = previous.get("status") in ("running", "failed")
        if not self.force and interrupted and last.is_file() and previous.get("config_hash") == stage.config_hash():
            log.info("%s: resuming the interrupted fit from %s (--force starts it over)", stage.name, last)
            return dataclasses.replace(stage, extra_args=[*stage.extra_args, "--ckpt_path", str(last)])
        if last.is_file() and interrupted and not self.force:
            log.info("%s: config changed since the interrupted fit; training from scratch", stage.name)
        shutil.rmtree(checkpoints, ignore_errors=True)
        return stage

    def _reference_or_manifest(self, stage: Stage) -> Stage:
        """A merge normalizes by the individual row's report; when that row was not run (e.g.
        `--only fit,merge`), by the experts' scores recorded in the manifest instead."""
        reference = stage.config.get("reference")
        if not reference or reference in ("manifest", "evaluate"):
            return stage
        path = Path(reference)
        if path.is_file() or (path / "report.json").is_file():
            return stage
        log.info("%s: %s has no report yet (test_%s not run); normalizing by the manifest's expert scores",
                 stage.name, path, REFERENCE_ROW)
        return dataclasses.replace(stage, config={**stage.config, "reference": "manifest"})

    def check(self, stages: list[Stage] | None = None) -> None:
        """Check the stage configs (default: those of the selected groups) with the validator.

        Raises:
            RecipeError: the stages that would fail, each with its own message.
        """
        if self.validator is None:
            return
        selected = [s for s in self.planner.stages() if self._group(s) in self.only] if stages is None else stages
        started = time.perf_counter()
        check_stages(selected, self.validator, self.recipe.source_path or self.recipe.name)
        log.debug("checked %d stage configs in %.1fs", len(selected), time.perf_counter() - started)

    def run_stage(self, stage: Stage) -> dict[str, Any]:
        """Write the stage's config and run it (or skip it); returns its state record."""
        config_path = write_config(stage, self.planner.config_dir)
        reason = self._skip_reason(stage)
        if reason:
            log.info("skip %s: %s", stage.name, reason)
            record = self.state["stages"].setdefault(stage.name, {})
            record.setdefault("status", "done")
            record["skipped_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            return record
        if stage.kind in ("baseline", "statistics", "merge") and stage.row != MULTITASK_ROW:
            self._check_experts_ready()
        launch = self._resume_or_clean(stage) if stage.command == "fit" else self._reference_or_manifest(stage)
        if launch.config != stage.config:
            config_path = write_config(launch, self.planner.config_dir)  # the file holds what runs
        # The record's hash is the config's: resuming (an extra --ckpt_path) is the same run.
        config_hash = stage.config_hash() if launch.config == stage.config else launch.config_hash()
        extra = "".join(f" {a}" for a in launch.extra_args)
        log.info("%s: python -m neuroflow %s --config %s%s", stage.name, launch.command, config_path, extra)
        started = time.perf_counter()
        self.state["stages"][stage.name] = {"status": "running", "config": str(config_path), "config_hash": config_hash}
        self._save_state()
        try:
            self.launch(launch, config_path, self.out / "logs" / f"{stage.name}.log")
        except BaseException:
            self.state["stages"][stage.name]["status"] = "failed"
            self.state["stages"][stage.name]["wall_s"] = round(time.perf_counter() - started, 2)
            self._save_state()
            raise
        record = {
            "status": "done",
            "config": str(config_path),
            "config_hash": config_hash,
            "wall_s": round(time.perf_counter() - started, 2),
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        if stage.kind in ("baseline", "statistics", "merge"):
            record["experts"] = self._experts_key(stage)
        self.state["stages"][stage.name] = record
        self._save_state()
        log.info("%s done in %.1fs", stage.name, record["wall_s"])
        return record

    def run(self) -> dict[str, Any] | None:
        """Check the selected stages' configs, run them, then write and print the combined report."""
        self.check()
        self.out.mkdir(parents=True, exist_ok=True)
        self.state["recipe"] = recipe_to_dict(self.recipe)
        self.state["versions"] = _versions()
        atomic_write_text(self.out / "recipe.resolved.yaml", yaml.safe_dump(recipe_to_dict(self.recipe), sort_keys=False))
        atomic_write_json(self.out / "task_specs.json", self.planner.specs)
        started = time.perf_counter()
        for stage in self.planner.stages():
            if self._group(stage) in self.only:
                self.run_stage(stage)
            else:
                write_config(stage, self.planner.config_dir)
        self.state["last_run_wall_s"] = round(time.perf_counter() - started, 2)
        self._save_state()
        if "report" not in self.only:
            return None
        return self.report()

    # -- report --------------------------------------------------------------------------------
    def rows(self) -> list[tuple[str, Path]]:
        """(row name, run dir) of every evaluated row whose report exists, in table order."""
        stages = self.planner.baseline_stages() + self.planner.multitask_stages() + self.planner.merge_stages()
        return [(s.row, s.report_dir) for s in stages
                if s.row and s.report_dir and (s.report_dir / "report.json").is_file()]

    def report(self) -> dict[str, Any] | None:
        """Combine the rows' reports into `<output_dir>/report.{json,md,png}` and print the table."""
        from neuroflow.evaluation.report import combine_reports, write_report

        rows = self.rows()
        if not rows:
            log.info("no evaluated rows yet; nothing to report")
            return None
        combined = combine_reports([d for _, d in rows])
        combined = rename_runs(combined, [name for name, _ in rows])
        combined = renormalize(combined, REFERENCE_ROW)
        combined["pipeline"] = {
            "recipe": self.recipe.source_path,
            "seed": self.recipe.seed,
            "versions": self.state.get("versions", _versions()),
            "stages": {k: {f: v.get(f) for f in ("status", "wall_s", "finished_at")}
                       for k, v in self.state["stages"].items()},
        }
        write_report(combined, self.out)
        table = render_rows_table(combined, title=f"{self.recipe.name}: test split")
        timings = self.timings_table()
        (self.out / "summary.md").write_text(table + "\n" + timings)
        self.echo("\n" + table)
        self.echo(timings)
        log.info("report: %s (+ .json, .png), summary: %s", self.out / "report.md", self.out / "summary.md")
        return combined

    def timings_table(self) -> str:
        lines = ["| stage | wall time (s) | status |", "|---|---|---|"]
        total = 0.0
        for name, rec in self.state["stages"].items():
            wall = rec.get("wall_s")
            total += wall or 0.0
            lines.append(f"| {name} | {wall if wall is not None else '-'} | {rec.get('status', '-')} |")
        lines.append(f"| **total** | {round(total, 1)} | |")
        return "\n".join(lines) + "\n"


def run_recipe(recipe: Recipe, force: bool = False, only: list[str] | None = None,
               launcher: str | Callable[..., None] | None = None,
               entry_point: EntryPoint | None = None, validator: Validator | None = None) -> dict[str, Any] | None:
    """Run a recipe end to end (see `PipelineRunner`); without `entry_point`, stages of the
    `inprocess` launcher run as subprocesses (`python -m neuroflow ...`)."""
    if entry_point is None and (launcher or recipe.launcher) == "inprocess":
        launcher = "subprocess"
    return PipelineRunner(recipe, force=force, only=only, launcher=launcher, entry_point=entry_point,
                          validator=validator).run()
