"""Runner behaviour without training: failures, stage groups, state."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from neuroflow.pipeline import PipelineRunner, load_recipe
from neuroflow.commands.run import main as run_main
from neuroflow.pipeline.launch import StageFailed

RECIPE = """\
# python -m neuroflow run recipe.yaml
name: r
backbone: {backbone}
tasks: [trec, sst2]
caps: {{train: 16, validation: 8, test: 8}}
output_dir: {out}
merges:
  - name: ties
    method: {{class_path: neuroflow.merging.TIES}}
"""


@pytest.fixture()
def recipe_path(tmp_path: Path, tiny_bert: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE.format(backbone=tiny_bert, out=tmp_path / "out"))
    return path


def test_a_failed_stage_is_recorded_and_stops_the_run(recipe_path: Path, tmp_path: Path) -> None:
    ran: list[str] = []

    def launcher(stage, config_path, log_path):  # noqa: ANN001
        ran.append(stage.name)
        if stage.name == "fit_sst2":
            raise StageFailed(f"stage {stage.name} ({config_path}) failed: boom")

    with pytest.raises(StageFailed, match=r"fit_sst2 .*fit_sst2.yaml\) failed: boom"):
        PipelineRunner(load_recipe(recipe_path), launcher=launcher, echo=lambda _: None).run()
    assert ran == ["fit_trec", "fit_sst2"]
    state = json.loads((tmp_path / "out" / "pipeline_state.json").read_text())
    assert state["stages"]["fit_trec"]["status"] == "done"
    assert state["stages"]["fit_sst2"]["status"] == "failed"
    # every stage's config is still written by a dry run; the evaluation stages refuse to run
    # without the experts, naming the missing ones
    with pytest.raises(StageFailed, match=r"lacks experts for \['trec', 'sst2'\]"):
        PipelineRunner(load_recipe(recipe_path), only=["baselines"], launcher=launcher, echo=lambda _: None).run()


def test_only_groups_and_bad_group(recipe_path: Path) -> None:
    ran: list[str] = []
    runner = PipelineRunner(load_recipe(recipe_path), only=["fit"], launcher=lambda s, c, l: ran.append(s.name),
                            echo=lambda _: None)
    assert runner.run() is None  # no report group, no report
    assert ran == ["fit_trec", "fit_sst2"]
    assert sorted(p.name for p in runner.planner.config_dir.iterdir()) == [
        "fit_sst2.yaml", "fit_trec.yaml", "merge_ties.yaml", "test_individual.yaml", "test_pretrained.yaml"]
    with pytest.raises(ValueError, match=r"unknown stage group\(s\) \['fitt'\]"):
        PipelineRunner(load_recipe(recipe_path), only=["fitt"])


def test_joint_model_test_runs_with_its_fit_not_with_the_baselines(recipe_path: Path) -> None:
    def ran(only: list[str]) -> list[str]:
        names: list[str] = []
        recipe = load_recipe(recipe_path, overrides=["multitask.enabled=true"])
        PipelineRunner(recipe, only=only, launcher=lambda s, c, l: names.append(s.name), echo=lambda _: None).run()
        return names

    # (The baselines need collected experts, which this launcher does not make.)
    assert ran(["fit"]) == ["fit_trec", "fit_sst2"]
    assert ran(["fit", "multitask"]) == ["fit_trec", "fit_sst2", "fit_multitask", "test_multitask"]


def test_command_reports_a_failing_stage(recipe_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        run_main([str(recipe_path), "--set", f"backbone={tmp_path / 'no_such_model'}", "--only", "fit"])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "neuroflow run: error: stage fit_trec" in err and "rerun the same command to continue" in err
    with pytest.raises(SystemExit) as info:
        run_main([str(recipe_path), "--set", "caps.dev=3"])
    assert info.value.code == 2 and "caps.dev: unknown split" in capsys.readouterr().err
