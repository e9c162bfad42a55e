"""Fixtures of the evaluation tests: two tiny BERT experts fine-tuned on real rows (trec, sst2)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel

from neuroflow.callbacks.expert_collector import ExpertCollector
from neuroflow.data.datamodule import MultiTaskDataModule
from neuroflow.experts import load_manifest, load_task_vector
from neuroflow.merging import routing_from_module
from neuroflow.models import MultiTaskModule
from neuroflow.models.optim import AdamW
from neuroflow.trainer import NeuroTrainer

TASKS = ["trec", "sst2"]
# Odd sizes, so an evaluation set split over 2 processes is uneven (padding would show).
EVAL_EXAMPLES = 41


def make_datamodule(tiny_bert: str, data_dir: str, cache_dir: Path, tasks: list[str] = TASKS) -> MultiTaskDataModule:
    return MultiTaskDataModule(
        tasks, data_dir=data_dir, tokenizer=tiny_bert, max_length=32, batch_size=16, eval_batch_size=16,
        max_train_examples=128, max_eval_examples=EVAL_EXAMPLES, cache_dir=str(cache_dir),
    )


def quiet_trainer(**kwargs) -> NeuroTrainer:
    return NeuroTrainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, **kwargs)


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


@torch.no_grad()
def direct_metrics(model: torch.nn.Module, heads: dict[str, torch.Tensor], loaders: list, tasks: list[str]) -> dict[str, float]:
    """Accuracy per task from plain forward passes: CLS feature -> the head's linear layer."""
    model.eval()
    out = {}
    for task, loader in zip(tasks, loaders):
        correct = total = 0
        for batch in loader:
            hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           token_type_ids=batch.get("token_type_ids")).last_hidden_state
            logits = hidden[:, 0] @ heads[f"{task}.linear.weight"].T + heads[f"{task}.linear.bias"]
            correct += int((logits.argmax(-1) == batch["labels"]).sum())
            total += int(batch["labels"].numel())
        out[task] = correct / total
    return out


class Direct:
    """The pieces a direct computation needs: base weights, experts' weights and heads, loaders."""

    def __init__(self, tiny_bert: str, experts: Path, data_dir: str, cache: Path) -> None:
        self.tiny_bert = tiny_bert
        self.model = AutoModel.from_pretrained(tiny_bert)
        self.base = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.routing = routing_from_module(self.model)
        entries = {e["task"]: e for e in load_manifest(experts)}
        self.experts = []
        self.heads: dict[str, torch.Tensor] = {}
        for task in TASKS:
            tv = load_task_vector(experts, entries[task], self.base)
            self.experts.append({k: self.base[k] + tv[k] if k in tv else self.base[k] for k in self.base})
            self.heads.update(load_file(str(experts / entries[task]["heads"][task]["path"])))
        self.dm = make_datamodule(tiny_bert, data_dir, cache)
        self.dm.setup("fit")
        self.dm.setup("test")

    def metrics(self, weights: dict[str, torch.Tensor], split: str) -> dict[str, float]:
        self.model.load_state_dict(weights)
        loaders = self.dm.test_dataloader() if split == "test" else self.dm.val_dataloader()
        return direct_metrics(self.model, self.heads, loaders, TASKS)

    def expert_metrics(self, split: str) -> dict[str, float]:
        return {task: self.metrics(self.experts[i], split)[task] for i, task in enumerate(TASKS)}


@pytest.fixture(scope="session")
def direct(tiny_bert, trained_experts, shared_data_dir, eval_cache) -> Direct:
    return Direct(tiny_bert, trained_experts, shared_data_dir, eval_cache)
