"""`python -m neuroflow fit` end to end (in-process), resuming, and bad input caught before training."""

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

from neuroflow.commands.cli import main


def fit_config(tmp_path: Path, backbone: str, data_dir: str, cache_dir: str, **data_overrides) -> dict:
    return {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "max_epochs": 1, "enable_progress_bar": False,
            "enable_model_summary": False, "num_sanity_val_steps": 0,
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                       "init_args": {"save_dir": str(tmp_path / "logs"), "name": "trec", "version": ""}},
            "callbacks": [
                {"class_path": "neuroflow.callbacks.ExpertCollector",
                 "init_args": {"experts_dir": str(tmp_path / "experts")}},
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                 "init_args": {"filename": "best-{epoch}", "monitor": "val/avg/score", "mode": "max"}},
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                 "init_args": {"filename": "last", "enable_version_counter": False}},
            ],
        },
        "model": {"class_path": "neuroflow.models.MultiTaskModule",
                  "init_args": {"backbone": backbone, "optimizer": {"class_path": "neuroflow.models.AdamW",
                                                                    "init_args": {"lr": 3e-3}}}},
        "data": {"class_path": "neuroflow.data.MultiTaskDataModule",
                 "init_args": {"tasks": ["trec"], "tokenizer": backbone, "data_dir": data_dir, "cache_dir": cache_dir,
                               "max_length": 32, "batch_size": 16, "max_train_examples": 48,
                               "max_eval_examples": 32, **data_overrides}},
    }


def write(tmp_path: Path, config: dict) -> str:
    path = tmp_path / "fit.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_fit_writes_an_expert_and_resumes_from_last(tiny_bert, shared_data_dir, data_cache_dir, tmp_path):
    config = write(tmp_path, fit_config(tmp_path, tiny_bert, shared_data_dir, data_cache_dir))
    main(["fit", "--config", config])
    entry = json.loads((tmp_path / "experts" / "trec" / "expert.json").read_text())
    assert entry["mode"] == "full" and entry["backbone"]["format"] == "task_vector"
    # The resolved CLI config is recorded, including values from defaults and the task link.
    assert entry["config"]["model"]["init_args"]["backbone"] == tiny_bert
    assert entry["config"]["data"]["init_args"]["max_train_examples"] == 48
    last = tmp_path / "logs" / "trec" / "checkpoints" / "last.ckpt"
    first_steps = torch.load(last, weights_only=True)["global_step"]

    main(["fit", "--config", config, "--trainer.max_epochs", "2", "--ckpt_path", "last"])
    state = torch.load(last, weights_only=True)
    assert state["epoch"] == 1 and state["global_step"] == 2 * first_steps
    with open(tmp_path / "logs" / "trec" / "metrics.csv") as handle:
        epochs = {row["epoch"] for row in csv.DictReader(handle)}
    assert epochs == {"1"}  # the resumed run trained epoch 1 only
    # Each run's config is in the log dir; the resumed run's does not replace the first run's.
    saved = tmp_path / "logs" / "trec"
    assert yaml.safe_load((saved / "config.yaml").read_text())["trainer"]["max_epochs"] == 1
    assert yaml.safe_load((saved / "config-1.yaml").read_text())["trainer"]["max_epochs"] == 2


def test_lora_piece_overrides_the_model(tiny_bert, shared_data_dir, data_cache_dir, tmp_path):
    config = fit_config(tmp_path, tiny_bert, shared_data_dir, data_cache_dir)
    config["model"]["init_args"]["lora"] = {"r": 2, "lora_alpha": 4, "target_modules": ["query", "value"]}
    main(["fit", "--config", write(tmp_path, config)])
    entry = json.loads((tmp_path / "experts" / "trec" / "expert.json").read_text())
    assert entry["mode"] == "lora" and entry["backbone"]["format"] == "lora"
    assert (tmp_path / "experts" / "trec" / "adapter" / "adapter_config.json").is_file()


def no_training_happened(tmp_path: Path) -> bool:
    return not (tmp_path / "logs" / "trec" / "checkpoints").exists() and not (tmp_path / "experts" / "trec").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["data"]["init_args"].update(tasks=["no_such_task"]), "no_such_task"),
        (lambda c: c["model"]["init_args"].update(lora={"r": 2, "target_modules": ["q_proj"]}),
         r"\['q_proj'\] not found in the backbone"),
    ],
    ids=["unknown-task", "bad-lora-target"],
)
def test_bad_input_fails_before_training(change, message, tiny_bert, shared_data_dir, data_cache_dir, tmp_path):
    config = fit_config(tmp_path, tiny_bert, shared_data_dir, data_cache_dir)
    change(config)
    with pytest.raises(Exception, match=message):
        main(["fit", "--config", write(tmp_path, config)])
    assert no_training_happened(tmp_path)


def test_unknown_family_is_a_parse_error(tiny_bert, shared_data_dir, data_cache_dir, tmp_path, capsys):
    config = fit_config(tmp_path, tiny_bert, shared_data_dir, data_cache_dir)
    config["model"]["init_args"]["family"] = "video"
    with pytest.raises(SystemExit):
        main(["fit", "--config", write(tmp_path, config)])
    assert "video" in capsys.readouterr().err
    assert no_training_happened(tmp_path)


@pytest.mark.parametrize(
    ("spec_change", "message"),
    [
        ({}, "maybe"),                                   # a label outside label_names
        ({"text_column": "sentence"}, "sentence"),       # a missing column
        ({"source": {"path": "csv", "data_files": {"train": "/nonexistent/rows.csv"}}}, "/nonexistent/rows.csv"),
    ],
    ids=["unknown-label", "missing-column", "missing-file"],
)
def test_bad_data_fails_before_training(spec_change, message, tiny_bert, shared_data_dir, data_cache_dir, tmp_path):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tmp_path / "rows.csv").write_text("text,label\nwhat is it,yes\nwho is he,maybe\nwhere,no\n" * 4)
    spec = {"name": "yesno", "source": {"path": "csv", "data_files": {"train": str(tmp_path / "rows.csv")}},
            "label_names": ["no", "yes"], "text_column": "text", "label_format": "name",
            "split_fractions": {"validation": 0.25, "test": 0.25}, **spec_change}
    (tasks / "yesno.yaml").write_text(yaml.safe_dump(spec))
    config = fit_config(tmp_path, tiny_bert, shared_data_dir, data_cache_dir, tasks=["yesno"], task_dirs=[str(tasks)])
    with pytest.raises(Exception, match=message):
        main(["fit", "--config", write(tmp_path, config)])
    assert not (tmp_path / "experts" / "yesno").exists()
    assert not (tmp_path / "logs" / "trec" / "checkpoints").exists()
