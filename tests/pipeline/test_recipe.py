"""Recipe loading: normal forms, overrides, `extends`, subsets and the errors for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from neuroflow.pipeline import RecipeError, load_recipe
from neuroflow.pipeline.recipe import recipe_to_dict

BASE = """\
# python -m neuroflow run base.yaml
name: base
backbone: some/model
tasks: [sst2, {name: mine, kind: text_classification, source: {path: csv, data_files: x.csv},
        label_names: [a, b], text_column: t}]
caps: {train: 100}
training: {max_epochs: 2, data: {batch_size: 8}}
merges:
  - name: ties
    method: {class_path: neuroflow.merging.TIES, init_args: {mask_rate: 0.8}}
  - name: ta_val
    method: {class_path: neuroflow.merging.TaskArithmetic}
    search: {scaling: [0.3, 0.5]}
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_load_normalizes_tasks_and_defaults(tmp_path: Path) -> None:
    recipe = load_recipe(_write(tmp_path, "base.yaml", BASE))
    assert recipe.task_names == ["sst2", "mine"]
    assert recipe.tasks["sst2"] == {}
    assert recipe.tasks["mine"]["label_names"] == ["a", "b"]
    assert recipe.output_dir == "runs/base"
    assert recipe.training.max_epochs == 2 and recipe.training.data == {"batch_size": 8}
    assert recipe.training.mode == "full" and recipe.multitask.enabled is False
    assert [m.name for m in recipe.merges] == ["ties", "ta_val"]
    assert recipe.merges[1].search == {"scaling": [0.3, 0.5]}
    assert recipe_to_dict(recipe)["caps"] == {"train": 100}


def test_dotlist_and_file_overrides(tmp_path: Path) -> None:
    base = _write(tmp_path, "base.yaml", BASE)
    extra = _write(tmp_path, "extra.yaml", "tasks: {mine: {source: {path: json, data_files: y.json}}}\nseed: 7\n")
    recipe = load_recipe(base, overrides=["caps.test=50", "backbone=/tmp/tiny", "tasks.sst2.max_examples.train=9"],
                         override_files=[extra])
    assert recipe.caps == {"train": 100, "test": 50}
    assert recipe.backbone == "/tmp/tiny" and recipe.seed == 7
    assert recipe.tasks["mine"]["source"] == {"path": "json", "data_files": "y.json"}
    assert recipe.tasks["sst2"] == {"max_examples": {"train": 9}}


def test_extends_replaces_tasks_and_merges(tmp_path: Path) -> None:
    _write(tmp_path, "base.yaml", BASE)
    child = _write(tmp_path, "child.yaml", "extends: base.yaml\nname: child\ntasks: [trec]\ncaps: {test: 5}\n")
    recipe = load_recipe(child)
    assert recipe.name == "child" and recipe.task_names == ["trec"]
    assert recipe.caps == {"train": 100, "test": 5}          # deep-merged
    assert [m.name for m in recipe.merges] == ["ties", "ta_val"]  # inherited when not given
    assert recipe.training.max_epochs == 2


def test_extends_drops_task_training_of_dropped_tasks(tmp_path: Path) -> None:
    _write(tmp_path, "base.yaml", BASE + "task_training:\n  sst2: {max_epochs: 8}\n  mine: {max_epochs: 3}\n")
    # The child keeps sst2 (and its budget) and drops `mine`, whose budget would otherwise be refused.
    child = _write(tmp_path, "child.yaml", "extends: base.yaml\nname: child\ntasks: [sst2, trec]\n")
    recipe = load_recipe(child)
    assert recipe.task_names == ["sst2", "trec"]
    assert recipe.task_training == {"sst2": {"max_epochs": 8}}
    # A budget the child itself gives a task it does not have is still an error.
    bad = _write(tmp_path, "bad.yaml", "extends: base.yaml\nname: bad\ntasks: [trec]\n"
                 "task_training: {mine: {max_epochs: 2}}\n")
    with pytest.raises(RecipeError, match=r"task_training\.mine: not a task of this recipe"):
        load_recipe(bad)


def test_task_subset(tmp_path: Path) -> None:
    base = _write(tmp_path, "base.yaml", BASE)
    assert load_recipe(base, tasks=["mine"]).task_names == ["mine"]
    with pytest.raises(RecipeError, match=r"--tasks \['nope'\] not in the recipe's tasks"):
        load_recipe(base, tasks=["nope"])


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"bogus": 1}, r"unknown key\(s\) \['bogus'\] under `<top level>`"),
        ({"training": {"epochs": 3}}, r"unknown key\(s\) \['epochs'\] under `training`"),
        ({"caps": {"dev": 3}}, r"caps.dev: unknown split"),
        ({"caps": {"train": 0}}, r"caps.train must be a positive integer"),
        ({"training": {"mode": "qlora"}}, r"training.mode='qlora'"),
        ({"training": {"mode": "lora"}}, r"training.lora \(LoraConfig kwargs\) is empty"),
        ({"merges": [{"name": "a", "method": {"init_args": {}}}]}, r"merges\[0\] \(a\).method needs a `class_path`"),
        ({"merges": [{"name": "individual", "method": {"class_path": "x.Y"}}]}, r"'individual' is used twice or reserved"),
        ({"merges": [{"name": "a", "method": {"class_path": "x.Y"}, "search": {"scaling": []}}]},
         r"search.scaling must be a non-empty list"),
        ({"tasks": ["sst2", "sst2"]}, r"task 'sst2' is listed twice"),
        ({"name": "a b"}, r"name 'a b' may only hold"),
    ],
)
def test_bad_recipes_name_the_key(tmp_path: Path, edit: dict, message: str) -> None:
    data = yaml.safe_load(BASE)
    data.update(edit)
    path = _write(tmp_path, "bad.yaml", yaml.safe_dump(data))
    with pytest.raises(RecipeError, match=message) as info:
        load_recipe(path)
    assert str(path) in str(info.value)


def test_missing_file_and_required_keys(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(RecipeError, match="`backbone` is required"):
        load_recipe(_write(tmp_path, "r.yaml", "name: x\ntasks: [sst2]\n"))
    with pytest.raises(RecipeError, match="extends.*loops|`extends` loops"):
        load_recipe(_write(tmp_path, "loop.yaml", "extends: loop.yaml\nname: x\n"))
    with pytest.raises(RecipeError, match=r"override\(s\) \['caps.train'\] must look like key=value"):
        load_recipe(_write(tmp_path, "ok.yaml", BASE), overrides=["caps.train"])


def test_task_training_overlays_one_expert(tmp_path: Path) -> None:
    text = BASE + "task_training: {mine: {max_epochs: 8, early_stopping: {patience: 2}, data: {batch_size: 4}}}\n"
    recipe = load_recipe(_write(tmp_path, "r.yaml", text))
    mine, sst2 = recipe.expert_training("mine"), recipe.expert_training("sst2")
    assert (mine.max_epochs, mine.early_stopping, mine.data) == (8, {"patience": 2}, {"batch_size": 4})
    assert (sst2.max_epochs, sst2.early_stopping, sst2.data) == (2, None, {"batch_size": 8})
    # The overlay reaches the expert's fit config, and only that expert's.
    from neuroflow.pipeline import plan_recipe

    stages = {s.name: s for s in plan_recipe(recipe).expert_stages()}
    assert stages["fit_mine"].config["trainer"]["max_epochs"] == 8
    assert stages["fit_sst2"].config["trainer"]["max_epochs"] == 2
    assert any("EarlyStopping" in c["class_path"] for c in stages["fit_mine"].config["trainer"]["callbacks"])
    assert not any("EarlyStopping" in c["class_path"] for c in stages["fit_sst2"].config["trainer"]["callbacks"])
    # A --tasks subset drops the overlays of the tasks it leaves out.
    assert load_recipe(tmp_path / "r.yaml", tasks=["sst2"]).task_training == {}


@pytest.mark.parametrize(
    ("overlay", "message"),
    [
        ({"nope": {"max_epochs": 3}}, r"task_training.nope: not a task of this recipe"),
        ({"mine": {"epochs": 3}}, r"unknown key\(s\) \['epochs'\] under `task_training.mine`"),
        ({"mine": {"mode": "lora"}}, r"task_training.mine.mode='lora' differs from training.mode='full'"),
        ({"mine": 3}, r"task_training.mine must be a mapping"),
    ],
)
def test_bad_task_training_names_the_key(tmp_path: Path, overlay: dict, message: str) -> None:
    data = yaml.safe_load(BASE)
    data["task_training"] = overlay
    path = _write(tmp_path, "bad.yaml", yaml.safe_dump(data))
    with pytest.raises(RecipeError, match=message) as info:
        load_recipe(path)
    assert str(path) in str(info.value)
