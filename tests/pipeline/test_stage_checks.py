"""Recipes check every stage's config before anything runs, and a failing stage reports its own
error; `--only fit,merge` merges without the individual row's report."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from neuroflow.commands.cli import check_config
from neuroflow.commands.cli import main as cli_main
from neuroflow.commands.run import main as run_main
from neuroflow.pipeline import PipelineRunner, RecipeError, load_recipe
from neuroflow.pipeline.launch import StageFailed, run_inprocess, run_subprocess, write_config

RECIPE = """\
# python -m neuroflow run recipe.yaml
name: checked
backbone: {backbone}
data_dir: {data_dir}
tasks: [trec, sst2]
caps: {{train: 16, validation: 8, test: 8}}
output_dir: {out}
multitask: {{enabled: true}}
training:
  data: {{batch_size: 16, max_length: 24}}
  trainer: {{enable_progress_bar: false, enable_model_summary: false}}
evaluation:
  data: {{eval_batch_size: 32, max_length: 24}}
  trainer: {{enable_progress_bar: false, enable_model_summary: false}}
merges:
  - name: ties
    method: {{class_path: neuroflow.merging.TIES}}
  - name: ta_val
    method: {{class_path: neuroflow.merging.TaskArithmetic}}
    search: {{scaling: [0.3, 0.5]}}
"""


@pytest.fixture()
def recipe_path(tmp_path: Path, tiny_bert: str, shared_data_dir: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE.format(backbone=tiny_bert, data_dir=shared_data_dir, out=tmp_path / "out"))
    return path


def test_dry_run_names_the_stage_and_the_cause(recipe_path: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    with pytest.raises(SystemExit) as info:
        run_main([str(recipe_path), "--dry-run", "--set", "merges.0.method.class_path=neuroflow.merging.Ties"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "stage merge_ties: model.init_args.method: no MergeMethod named 'neuroflow.merging.Ties'" in err
    assert "did you mean 'neuroflow.merging.TIES'?" in err
    assert "merge_ta_val" not in err  # the other stages are fine


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("merges.0.method.init_args.mask_rate=1.5", r"stage merge_ties: model.init_args.method: .*mask_rate"),
        ("merges.1.search.scalin=[0.1]", r"stage merge_ta_val: model.init_args.search: .*scalin"),
        ("training.model.optimizer.init_args.lr=fast", r"stage fit_trec: model.init_args.optimizer.*lr"),
        ("evaluation.trainer.max_epoch=2", r"stage test_pretrained: unknown key 'trainer.max_epoch'.*max_epochs"),
    ],
    ids=["method-value", "search-key", "fit-type", "eval-trainer-key"],
)
def test_a_real_run_checks_before_the_first_stage(recipe_path: Path, override: str, message: str) -> None:
    ran: list[str] = []
    runner = PipelineRunner(load_recipe(recipe_path, overrides=[override]), launcher=lambda s, c, l: ran.append(s.name),
                            echo=lambda _: None, validator=check_config)
    with pytest.raises(RecipeError, match=message):
        runner.run()
    assert ran == []  # nothing was trained


def test_every_stage_passes_and_the_check_is_fast(recipe_path: Path) -> None:
    runner = PipelineRunner(load_recipe(recipe_path), launcher=lambda s, c, l: None, echo=lambda _: None,
                            validator=check_config)
    runner.check()  # warm: the CLI parser is built once per process
    started = time.perf_counter()
    runner.check()
    assert time.perf_counter() - started < 30  # 8 stages; seconds, not one CLI start per stage


def _bad_stage(recipe_path: Path):  # noqa: ANN202
    planner = PipelineRunner(load_recipe(recipe_path), launcher=lambda s, c, l: None).planner
    stage = planner.merge_stages()[0]
    stage.config["model"]["init_args"]["method"]["class_path"] = "neuroflow.merging.Ties"
    return stage, write_config(stage, planner.config_dir)


def test_inprocess_launcher_surfaces_the_stage_error(recipe_path: Path, tmp_path: Path) -> None:
    stage, path = _bad_stage(recipe_path)
    log_path = tmp_path / "out" / "logs" / "merge_ties.log"
    with pytest.raises(StageFailed) as info:
        run_inprocess(stage, path, log_path, cli_main)
    assert "no MergeMethod named 'neuroflow.merging.Ties'" in str(info.value)
    assert "did you mean 'neuroflow.merging.TIES'?" in log_path.read_text()  # the stage's own log


def test_subprocess_launcher_surfaces_the_stage_error(recipe_path: Path, tmp_path: Path) -> None:
    stage, path = _bad_stage(recipe_path)
    with pytest.raises(StageFailed) as info:
        run_subprocess(stage, path, tmp_path / "logs" / "merge_ties.log")
    assert "no MergeMethod named 'neuroflow.merging.Ties'" in str(info.value)
    assert "exited with" not in str(info.value)


def test_only_fit_and_merge_normalizes_by_the_manifest(recipe_path: Path, tmp_path: Path, pipeline_experts: Path) -> None:
    recipe = load_recipe(recipe_path, overrides=[f"experts_dir={pipeline_experts}", "merges=[{name: ties, method: "
                                                 "{class_path: neuroflow.merging.TIES}}]"])
    ran: list[str] = []

    def launcher(stage, config_path, log_path) -> None:  # noqa: ANN001
        ran.append(stage.name)
        run_inprocess(stage, config_path, log_path, cli_main)

    PipelineRunner(recipe, only=["fit", "merge"], launcher=launcher, echo=lambda _: None).run()
    assert ran == ["merge_ties"]  # the experts are collected already
    config = yaml.safe_load((tmp_path / "out" / "configs" / "merge_ties.yaml").read_text())
    assert config["reference"] == "manifest"  # eval/individual was never produced
    report = json.loads((tmp_path / "out" / "merged" / "ties" / "report.json").read_text())
    # the experts' recorded numbers (these tiny experts recorded none, so they are scored by the merge)
    assert {e["expert_source"] for e in report["tasks"].values()} <= {"manifest", "evaluated"}


def test_run_accepts_output_dir_with_an_underscore(recipe_path: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    for flag in ("--output_dir", "--output-dir"):
        out = tmp_path / flag.strip("-")
        run_main([str(recipe_path), "--dry-run", flag, str(out)])
        assert (out / "configs" / "merge_ties.yaml").is_file()
    assert "python -m neuroflow merge --config" in capsys.readouterr().out
