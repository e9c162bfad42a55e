"""Fixtures of the evaluation tests: two tiny BERT experts fine-tuned on real rows (trec, sst2)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from eval_helpers import TASKS, Direct, make_datamodule, quiet_trainer

from neuroflow.callbacks.expert_collector import ExpertCollector
from neuroflow.models import MultiTaskModule
from neuroflow.models.optim import AdamW


@pytest.fixture(scope="session")
def eval_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("eval_cache")


@pytest.fixture(scope="session")
def trained_experts(tiny_bert: str, shared_data_dir: str, eval_cache: Path, tmp_path_factory) -> Path:
    """An experts directory with a full fine-tuned expert per task (task vectors), read-only."""
    experts = tmp_path_factory.mktemp("experts_ro")
    for task in TASKS:
        torch.manual_seed(0)
        dm = make_datamodule(tiny_bert, shared_data_dir, eval_cache, [task])
        module = MultiTaskModule(backbone=tiny_bert, tasks=dm.task_specs,
                                 optimizer=lambda p: AdamW(p, lr=5e-3), lr_scheduler=None, head_dropout=0.0)
        trainer = quiet_trainer(max_steps=32, num_sanity_val_steps=0, callbacks=[ExpertCollector(str(experts), monitor=None)])
        trainer.fit(module, datamodule=dm)
    return experts


@pytest.fixture
def experts_copy(trained_experts: Path, tmp_path: Path) -> Path:
    """A private copy of the experts directory that a test may damage."""
    target = tmp_path / "experts"
    shutil.copytree(trained_experts, target)
    return target


@pytest.fixture(scope="session")
def direct(tiny_bert, trained_experts, shared_data_dir, eval_cache) -> Direct:
    return Direct(tiny_bert, trained_experts, shared_data_dir, eval_cache)
