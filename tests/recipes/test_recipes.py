"""Every shipped recipe parses and plans; the paper recipes run at tiny scale through the same code.

The paper recipes name hub models and datasets that cannot be reached here. Their tiny substitutes
keep everything else: the recipe file itself, its task definitions (columns, label names and
formats, templates, split mapping), its merges; only `backbone` and each task's `source` are
overridden (a tiny model from `neuroflow.testing`, local JSON files with the hub dataset's columns).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from neuroflow.commands.cli import main as cli_main
from neuroflow.evaluation.report import load_report
from neuroflow.pipeline import PipelineRunner, load_recipe, plan_recipe
from neuroflow.pipeline.launch import cli_args, write_config

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "recipes").rglob("*.yaml"))


def test_recipes_exist() -> None:
    names = {p.relative_to(REPO / "recipes").as_posix() for p in RECIPES}
    assert {"demo.yaml", "text8.yaml", "text4.yaml", "paper_t5.yaml", "paper_clip.yaml",
            "slurm/text8_gpu.yaml"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.relative_to(REPO / "recipes").as_posix())
def test_recipe_loads_plans_and_its_configs_parse(path: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    text = path.read_text()
    assert text.startswith("# python -m neuroflow run recipes/"), "first line gives the command"
    recipe = load_recipe(path, overrides=[f"output_dir={tmp_path / 'out'}"])
    planner = plan_recipe(recipe)
    stages = planner.stages()
    assert [s.name for s in stages if s.command == "fit"][: len(recipe.task_names)] == [
        f"fit_{t}" for t in recipe.task_names]
    assert sum(s.command == "merge" for s in stages) == len(recipe.merges)
    # one expert fit and one merge with a search are enough to check the CLI accepts the configs
    chosen = [stages[0]] + [s for s in stages if s.command == "merge"][-1:]
    for stage in chosen:
        config = write_config(stage, planner.config_dir)
        with pytest.raises(SystemExit) as info:
            cli_main([*cli_args(stage, config), "--print_config"])
        assert info.value.code in (0, None)
        assert yaml.safe_load(capsys.readouterr().out)["model"]["class_path"] == stage.config["model"]["class_path"]


def test_paper_recipes_use_the_published_defaults() -> None:
    for name in ("paper_t5.yaml", "paper_clip.yaml"):
        recipe = load_recipe(REPO / "recipes" / name)
        methods = {m.name: m for m in recipe.merges}
        assert methods["task_arithmetic"].method["init_args"] == {"scaling": 0.3}
        assert methods["ties"].method["init_args"] == {"mask_rate": 0.8, "scaling": 1.0}
        assert methods["dare_ties"].method["init_args"] == {"drop_rate": 0.9, "then": "ties", "scaling": 1.0}
        assert methods["neuromerging"].method["init_args"] == {"mask_rate": 0.8, "lambda_1": 0.0, "lambda_2": "auto"}
        assert set(methods["neuromerging_val"].search) == {"mask_rate", "lambda_1", "lambda_2"}
    t5 = load_recipe(REPO / "recipes" / "paper_t5.yaml")
    assert t5.backbone == "google-t5/t5-base" and t5.family == "seq2seq"
    assert t5.task_names == ["paws", "qasc", "quartz", "story_cloze", "wikiqa", "winogrande", "wsc"]
    assert t5.tasks["paws"]["source"] == {"path": "google-research-datasets/paws", "name": "labeled_final"}
    assert t5.tasks["winogrande"]["source"] == {"path": "allenai/winogrande", "name": "winogrande_xl"}
    clip = load_recipe(REPO / "recipes" / "paper_clip.yaml")
    assert clip.backbone == "openai/clip-vit-base-patch32" and clip.family == "vision"
    specs = plan_recipe(clip).specs
    assert {t: len(s["label_names"]) for t, s in specs.items()} == {
        "sun397": 397, "cars": 196, "resisc45": 45, "eurosat": 10, "svhn": 10, "gtsrb": 43, "mnist": 10, "dtd": 47}


# ---------------------------------------------------------------- tiny substitutes of the hub data
def _sentences(shared_data_dir: str, n: int) -> list[str]:
    lines = (Path(shared_data_dir) / "sst2" / "stsa.binary.train").read_text().splitlines()
    return [line[2:] for line in lines[:n]]


def _t5_rows(task: str, i: int, s: list[str]) -> dict[str, Any]:
    """One example with the hub dataset's columns (values from real sentences, labels cycling)."""
    a, b, c = s[i % len(s)], s[(i + 7) % len(s)], s[(i + 13) % len(s)]
    if task == "paws":
        return {"id": i, "sentence1": a, "sentence2": b, "label": i % 2}
    if task == "qasc":
        letters = "ABCDEFGH"
        return {"formatted_question": a + " " + " ".join(f"({x}) w{j}" for j, x in enumerate(letters)),
                "answerKey": letters[i % 8], "fact1": b}
    if task == "quartz":
        return {"para": a, "question": b, "answerKey": "AB"[i % 2], "id": str(i)}
    if task == "story_cloze":
        return {"input_sentence_1": a, "input_sentence_2": b, "input_sentence_3": c, "input_sentence_4": a,
                "sentence_quiz1": b, "sentence_quiz2": c, "answer_right_ending": 1 + i % 2}
    if task == "wikiqa":
        return {"question_id": f"q{i}", "question": a, "document_title": "t", "answer": b, "label": i % 2}
    if task == "winogrande":
        return {"sentence": a + " _ .", "option1": "x", "option2": "y", "answer": "12"[i % 2]}
    if task == "wsc":
        return {"text": a, "span1_index": 0, "span2_index": 2, "span1_text": "x", "span2_text": "it",
                "idx": i, "label": i % 2}
    raise KeyError(task)


def t5_substitutes(recipe_path: Path, root: Path, shared_data_dir: str, rows: int = 24) -> dict[str, Any]:
    """Override file content: each task's source -> local JSON lines with the hub columns, per split."""
    recipe = load_recipe(recipe_path)
    sentences = _sentences(shared_data_dir, 200)
    tasks: dict[str, Any] = {}
    for task, entry in recipe.tasks.items():
        files = {}
        for k, split in enumerate(sorted(set(entry["splits"].values()))):
            path = root / f"{task}.{split}.jsonl"
            path.write_text("".join(json.dumps(_t5_rows(task, i + 1000 * k, sentences)) + "\n" for i in range(rows)))
            files[split] = str(path)
        tasks[task] = {"source": {"path": "json", "name": None, "data_files": files}}
    return {"tasks": tasks}


TINY_RUN = {
    "caps": {"train": 16, "validation": 8, "test": 8},
    "training": {"max_epochs": 1, "data": {"batch_size": 8, "max_length": 48},
                 "trainer": {"precision": "32-true", "accelerator": "cpu", "devices": 1, "logger": False,
                             "enable_progress_bar": False, "enable_model_summary": False}},
    "evaluation": {"data": {"eval_batch_size": 16, "max_length": 48},
                   "trainer": {"precision": "32-true", "accelerator": "cpu", "devices": 1,
                               "enable_progress_bar": False, "enable_model_summary": False}},
    # The baselines and the joint model run through the same code for every recipe
    # (tests/pipeline/test_end_to_end.py); here: the experts and two merges, for speed.
    "multitask": {"enabled": False},
    "baselines": {"pretrained": False, "individual": False},
    "merges": [
        {"name": "neuromerging", "method": {"class_path": "neuroflow.merging.NeuroMerging",
                                            "init_args": {"mask_rate": 0.8, "lambda_1": 0.0, "lambda_2": "auto"}}},
        {"name": "ties_val", "method": {"class_path": "neuroflow.merging.TIES", "init_args": {"mask_rate": 0.8}},
         "search": {"scaling": [0.5, 1.0]}},
    ],
}


def _run_tiny(recipe_path: Path, override: dict[str, Any], root: Path, backbone: str, tasks: list[str],
              search: bool = True) -> Path:
    tiny = dict(TINY_RUN)
    if not search:
        # An untrained tiny T5 generates no valid answer (expert accuracy 0), so a normalized
        # validation score, and with it a search, is undefined; TIES runs with its defaults instead.
        tiny["merges"] = [tiny["merges"][0], {"name": "ties_val", "method": {"class_path": "neuroflow.merging.TIES"}}]
    files = []
    for i, layer in enumerate([override, tiny]):
        path = root / f"override{i}.yaml"
        path.write_text(yaml.safe_dump(layer))
        files.append(path)
    out = root / "out"
    recipe = load_recipe(recipe_path, override_files=files, tasks=tasks,
                         overrides=[f"backbone={backbone}", f"output_dir={out}"])
    combined = PipelineRunner(recipe, echo=lambda _: None, entry_point=cli_main).run()
    assert [r["name"] for r in combined["runs"]] == ["neuromerging", "ties_val"]
    assert set(combined["tasks"]) == set(tasks)
    return out


def test_paper_t5_tiny_substitute_runs(tmp_path: Path, tiny_t5: str, shared_data_dir: str) -> None:
    recipe_path = REPO / "recipes" / "paper_t5.yaml"
    override = t5_substitutes(recipe_path, tmp_path, shared_data_dir)
    out = _run_tiny(recipe_path, override, tmp_path, tiny_t5, ["paws", "winogrande"], search=False)
    expert = json.loads((out / "experts" / "paws" / "expert.json").read_text())
    assert expert["family"] == "seq2seq" and expert["task_spec"]["input_template"].startswith("paws:")
    report = load_report(out / "merged" / "neuromerging")
    for task in ("paws", "winogrande"):
        assert 0.0 <= report["tasks"][task]["metrics"]["accuracy"] <= 1.0


@pytest.mark.slow
def test_paper_t5_every_task_tiny(tmp_path: Path, tiny_t5: str, shared_data_dir: str) -> None:
    recipe_path = REPO / "recipes" / "paper_t5.yaml"
    override = t5_substitutes(recipe_path, tmp_path, shared_data_dir)
    tasks = load_recipe(recipe_path).task_names
    _run_tiny(recipe_path, override, tmp_path, tiny_t5, tasks, search=False)


def test_paper_t5_every_task_loads_its_substitute(tmp_path: Path, tiny_t5: str, shared_data_dir: str) -> None:
    """All seven task definitions (columns, labels, templates, split mapping) load and encode."""
    from neuroflow.data import MultiTaskDataModule

    recipe_path = REPO / "recipes" / "paper_t5.yaml"
    override = tmp_path / "o.yaml"
    override.write_text(yaml.safe_dump(t5_substitutes(recipe_path, tmp_path, shared_data_dir, rows=40)))
    recipe = load_recipe(recipe_path, override_files=[override], overrides=["caps.validation=4", "caps.test=4"])
    specs = plan_recipe(recipe).specs
    dm = MultiTaskDataModule(tasks=list(specs.values()), tokenizer=tiny_t5, max_length=48, eval_batch_size=4)
    dm.setup("test")
    assert dm.task_names == recipe.task_names
    for task, loader in zip(dm.task_names, dm.test_dataloader()):
        batch = next(iter(loader))
        assert batch["task"] == task and batch["input_ids"].shape[0] == 4
        assert int(batch["label_index"].max()) < len(specs[task]["label_names"])


def test_paper_clip_tiny_substitute_runs(tmp_path: Path, tiny_vit: str, shared_data_dir: str) -> None:
    """CLIP's mnist and svhn tasks, their sources swapped for the local USPS and sklearn digits."""
    override = {"tasks": {
        "mnist": {"source": {"path": "dense_rows", "name": None, "shape": [16, 16], "label_position": 0,
                             "value_range": [-1, 1],
                             "data_files": {"train": "usps/zip.train.gz", "test": "usps/zip.test.gz"}}},
        "svhn": {"source": {"path": "dense_rows", "name": None, "shape": [8, 8], "label_position": -1,
                            "delimiter": ",", "value_range": [0, 16],
                            "data_files": {"train": "sklearn_digits/digits.csv.gz"}},
                 "splits": {"train": "train", "test": None}, "split_fractions": {"test": 0.2}},
    }, "data_dir": shared_data_dir}
    # The tiny ViT is single-channel at 32 x 32; CLIP's processor path makes RGB, so the tiny run uses
    # the DataModule's own resize/normalize instead (the real recipe keeps CLIP's image processor).
    pixels = {"image_processor": None, "image_size": 32, "num_channels": 1}
    override["training"] = {"data": pixels}
    override["evaluation"] = {"data": pixels}
    out = _run_tiny(REPO / "recipes" / "paper_clip.yaml", override, tmp_path, tiny_vit, ["mnist", "svhn"])
    expert = json.loads((out / "experts" / "svhn" / "expert.json").read_text())
    assert expert["family"] == "vision"
    assert load_report(out / "merged" / "ties_val")["search"]["best"]["params"]["scaling"] in (0.5, 1.0)


@pytest.mark.parametrize("name", ["demo.yaml", "text8.yaml", "text4.yaml", "paper_t5.yaml", "paper_clip.yaml",
                                  "slurm/text8_gpu.yaml"])
def test_recipes_leave_progress_on(name: str, tmp_path: Path) -> None:
    """Stages show progress (a bar on a terminal, log lines otherwise); only --quiet turns it off."""
    recipe = load_recipe(REPO / "recipes" / name, overrides=[f"output_dir={tmp_path / 'out'}"])
    for stage in plan_recipe(recipe).stages():
        if stage.command == "stats":  # not a Trainer run: the statistics command logs one line per expert
            continue
        assert stage.config["trainer"].get("enable_progress_bar") is not False, stage.name
