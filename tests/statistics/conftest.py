"""Fixtures of the statistics tests: two tiny BERT experts (trec, sst2) fine-tuned on real rows."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from neuroflow.callbacks.expert_collector import ExpertCollector
from neuroflow.commands.trainer import NeuroTrainer
from neuroflow.data import MultiTaskDataModule
from neuroflow.models import MultiTaskModule
from neuroflow.models.optim import AdamW
from stats_helpers import TASKS, data_args



@pytest.fixture(scope="session")
def stats_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stats_cache")


@pytest.fixture(scope="session")
def data_config(tiny_bert: str, shared_data_dir: str, stats_cache: Path, tmp_path_factory) -> Path:
    """A data config YAML like configs/data/text4.yaml, on the tiny BERT and the real data."""
    path = tmp_path_factory.mktemp("stats_config") / "data.yaml"
    config = {"class_path": "neuroflow.data.MultiTaskDataModule",
              "init_args": data_args(tiny_bert, shared_data_dir, stats_cache)}
    path.write_text("# python -m neuroflow stats --experts DIR --data data.yaml\n" + yaml.safe_dump(config))
    return path


@pytest.fixture(scope="session")
def fitted_experts(tiny_bert: str, shared_data_dir: str, stats_cache: Path, tmp_path_factory) -> Path:
    """An experts directory with a full fine-tuned expert (task vector) per task; do not modify."""
    experts = tmp_path_factory.mktemp("stats_experts_ro")
    for task in TASKS:
        torch.manual_seed(0)
        args = {**data_args(tiny_bert, shared_data_dir, stats_cache), "tasks": [task]}
        dm = MultiTaskDataModule(**args)
        module = MultiTaskModule(backbone=tiny_bert, tasks=dm.task_specs, optimizer=lambda p: AdamW(p, lr=5e-3),
                                 lr_scheduler=None, head_dropout=0.0)
        trainer = NeuroTrainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                               enable_model_summary=False, enable_checkpointing=False, max_steps=6,
                               num_sanity_val_steps=0, callbacks=[ExpertCollector(str(experts), monitor=None)])
        trainer.fit(module, datamodule=dm)
    return experts


@pytest.fixture
def experts(fitted_experts: Path, tmp_path: Path) -> Path:
    """A private copy of the experts that a test may write statistics into (or damage)."""
    target = tmp_path / "experts"
    shutil.copytree(fitted_experts, target)
    return target
