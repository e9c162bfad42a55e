"""Evaluation runs read only the evaluation files (issue 13 item 14): a merge needs no train file."""

from __future__ import annotations

import os
import shutil

import pytest

from neuroflow.data import MultiTaskDataModule, resolve_task
from neuroflow.data.loading import load_task


def test_eval_splits_equal_those_of_a_full_load(shared_data_dir):
    for name in ("sst2", "trec"):  # trec's validation split is carved from train: train is read then
        spec = resolve_task(name)
        full = load_task(spec, shared_data_dir)
        part = load_task(spec, shared_data_dir, splits=("validation", "test"))
        assert list(part) == ["validation", "test"]
        for split in part:
            assert part[split]["text"] == full[split]["text"] and part[split]["label"] == full[split]["label"]


def test_a_test_run_without_the_training_file(shared_data_dir, tiny_bert, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(os.path.join(shared_data_dir, "sst2"), data / "sst2")
    (data / "sst2" / "stsa.binary.train").unlink()
    dm = MultiTaskDataModule(["sst2"], data_dir=str(data), tokenizer=tiny_bert, max_eval_examples=16,
                             cache_dir=str(tmp_path / "cache"))
    dm.setup("test")
    assert len(dm.split_data("test")["sst2"]) == 16
    with pytest.raises(ValueError, match=r"stsa.binary.train.*not found"):
        dm.setup("fit")  # training does need it, and says which file


def test_missing_evaluation_file_still_fails_at_construction(shared_data_dir, tiny_bert, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(os.path.join(shared_data_dir, "sst2"), data / "sst2")
    (data / "sst2" / "stsa.binary.test").unlink()
    with pytest.raises(ValueError, match=r"stsa.binary.test.*not found"):
        MultiTaskDataModule(["sst2"], data_dir=str(data), tokenizer=tiny_bert)
