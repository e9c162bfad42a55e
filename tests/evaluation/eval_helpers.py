"""Helpers of the evaluation tests (imported as `eval_helpers`; the fixtures are in conftest.py)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModel

from neuroflow.data.datamodule import MultiTaskDataModule
from neuroflow.experts import load_manifest, load_task_vector
from neuroflow.merging import routing_from_module
from neuroflow.commands.trainer import NeuroTrainer

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
