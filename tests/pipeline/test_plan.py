"""The planner: resolved task specs and stage configs that the real CLI parses."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from neuroflow.commands.cli import main as cli_main
from neuroflow.pipeline import RecipeError, load_recipe, plan_recipe
from neuroflow.pipeline.launch import cli_args, write_config

RECIPE = """\
# python -m neuroflow run recipe.yaml
name: planned
backbone: {backbone}
tasks:
  trec: {{}}
  sms: {{task: sms_spam, max_examples: {{test: 7}}}}
  mine:
    kind: text_classification
    source: {{path: csv, data_files: {{train: a.csv}}, name: null}}
    label_names: [x, y]
    text_column: t
    num_labels: 5
caps: {{train: 40, test: 20}}
output_dir: {out}
multitask: {{enabled: true}}
merges:
  - name: ties
    method: {{class_path: neuroflow.merging.TIES, init_args: {{mask_rate: 0.7}}}}
  - name: nm_val
    method: {{class_path: neuroflow.merging.NeuroMerging}}
    search: {{lambda_2: [auto, 1.0]}}
"""


@pytest.fixture()
def recipe_path(tmp_path: Path, tiny_bert: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE.format(backbone=tiny_bert, out=tmp_path / "out"))
    return path


def test_task_specs_resolve_builtins_overrides_and_caps(recipe_path: Path) -> None:
    planner = plan_recipe(load_recipe(recipe_path))
    specs = planner.specs
    assert list(specs) == ["trec", "sms", "mine"]
    # built-in trec, recipe caps on top of the built-in's
    assert specs["trec"]["source"]["path"] == "label_text_lines"
    assert specs["trec"]["max_examples"] == {"train": 40, "test": 20}
    # a renamed built-in keeps its source and metrics, the entry's own caps win over the recipe's
    assert specs["sms"]["name"] == "sms" and specs["sms"]["metrics"] == ["accuracy", "f1"]
    assert specs["sms"]["max_examples"] == {"train": 40, "test": 7}
    # an inline spec: null keys dropped; explicit label names win over num_labels
    assert specs["mine"]["source"] == {"path": "csv", "data_files": {"train": "a.csv"}}
    assert specs["mine"]["label_names"] == ["x", "y"]


def test_num_labels_shorthand_and_bad_task(tmp_path: Path, recipe_path: Path) -> None:
    recipe = load_recipe(recipe_path, overrides=["tasks.mine.label_names=null"])
    assert plan_recipe(recipe).specs["mine"]["label_names"] == ["0", "1", "2", "3", "4"]
    bad = load_recipe(recipe_path, overrides=["tasks.trec.task=nonexistent_task"])
    with pytest.raises(RecipeError, match=r"tasks.trec: unknown task 'nonexistent_task'"):
        plan_recipe(bad)
    bad = load_recipe(recipe_path, overrides=["tasks.mine.metrics=[bleu]"])
    with pytest.raises(RecipeError, match=r"tasks.mine: .*unknown metrics \['bleu'\]"):
        plan_recipe(bad)


def test_stage_configs(recipe_path: Path, tmp_path: Path) -> None:
    planner = plan_recipe(load_recipe(recipe_path, tasks=["trec", "sms"]))
    stages = {s.name: s for s in planner.stages()}
    assert list(stages) == ["fit_trec", "fit_sms", "fit_multitask", "test_multitask", "test_pretrained",
                            "test_individual", "merge_ties", "merge_nm_val"]
    fit = stages["fit_trec"].config
    assert [t["name"] for t in fit["data"]["init_args"]["tasks"]] == ["trec"]
    collector = fit["trainer"]["callbacks"][1]
    assert collector["class_path"] == "neuroflow.callbacks.ExpertCollector"
    assert collector["init_args"]["experts_dir"] == str(tmp_path / "out" / "experts")
    assert collector["init_args"]["monitor"] == "val/trec/accuracy"
    # the joint model is not collected into the experts dir, and is tested from its best checkpoint
    joint = stages["fit_multitask"].config
    assert len(joint["trainer"]["callbacks"]) == 1 and joint["trainer"]["callbacks"][0]["init_args"]["monitor"] == "val/avg/score"
    assert stages["test_multitask"].extra_args == ["--ckpt_path", str(planner.best_checkpoint("multitask"))]
    merge = stages["merge_ties"].config
    assert merge["model"]["init_args"]["method"] == {"class_path": "neuroflow.merging.TIES", "init_args": {"mask_rate": 0.7}}
    assert merge["reference"] == str(planner.eval_dir("individual"))  # experts scored once, by the individual row
    search = stages["merge_nm_val"].config
    assert search["model"]["init_args"]["search"] == {"lambda_2": ["auto", 1.0]} and search["reference"] == str(planner.eval_dir("individual"))


def test_every_stage_config_parses_with_the_real_cli(recipe_path: Path, capsys: pytest.CaptureFixture) -> None:
    planner = plan_recipe(load_recipe(recipe_path, tasks=["trec", "sms"]))
    for stage in planner.stages():
        path = write_config(stage, planner.config_dir)
        assert path.read_text().startswith(f"# python -m neuroflow {stage.command} --config {path}")
        with pytest.raises(SystemExit) as info:
            cli_main([*cli_args(stage, path), "--print_config"])
        assert info.value.code in (0, None), stage.name
        printed = yaml.safe_load(capsys.readouterr().out)
        assert printed["model"]["class_path"] == stage.config["model"]["class_path"], stage.name


def test_a_recipe_logger_is_passed_as_given(recipe_path: Path) -> None:
    from neuroflow.commands.cli import check_config
    from neuroflow.pipeline.launch import config_for_check

    default = plan_recipe(load_recipe(recipe_path, tasks=["trec"])).expert_stages()[0].config["trainer"]["logger"]
    assert default["class_path"] == "lightning.pytorch.loggers.CSVLogger"
    mlflow = {"class_path": "lightning.pytorch.loggers.MLFlowLogger",
              "init_args": {"experiment_name": "neuroflow", "tracking_uri": "file:./mlruns"}}
    recipe = load_recipe(recipe_path, tasks=["trec"], overrides=[f"training.trainer.logger={mlflow}"])
    stage = plan_recipe(recipe).expert_stages()[0]
    assert stage.config["trainer"]["logger"] == mlflow  # no CSVLogger `name`/`save_dir` merged into it
    check_config(stage.command, config_for_check(stage.config), stage.extra_args)  # MLFlowLogger accepts it
    off = plan_recipe(load_recipe(recipe_path, tasks=["trec"], overrides=["training.trainer.logger=false"]))
    assert off.expert_stages()[0].config["trainer"]["logger"] is False


def test_early_stopping_on_the_fits_primary_metric(recipe_path: Path, tmp_path: Path) -> None:
    recipe = load_recipe(recipe_path, tasks=["trec"], overrides=["training.early_stopping={patience: 2, min_delta: 0.001}"])
    stages = {s.name: s for s in plan_recipe(recipe).stages()}
    callbacks = stages["fit_trec"].config["trainer"]["callbacks"]
    stop = [c for c in callbacks if c["class_path"].endswith("EarlyStopping")]
    assert stop == [{"class_path": "lightning.pytorch.callbacks.EarlyStopping",
                     "init_args": {"patience": 2, "min_delta": 0.001, "monitor": "val/trec/accuracy", "mode": "max"}}]
    # the collector selects by the same metric: the best epoch is what becomes the expert
    collector = [c for c in callbacks if c["class_path"].endswith("ExpertCollector")][0]
    assert collector["init_args"]["monitor"] == "val/trec/accuracy"
    path = write_config(stages["fit_trec"], tmp_path / "configs")
    with pytest.raises(SystemExit) as done:
        cli_main([*cli_args(stages["fit_trec"], path), "--print_config"])
    assert done.value.code in (0, None)
    # without it, no early stopping
    plain = {s.name: s for s in plan_recipe(load_recipe(recipe_path, tasks=["trec"])).stages()}
    assert not [c for c in plain["fit_trec"].config["trainer"]["callbacks"] if "EarlyStopping" in c["class_path"]]
