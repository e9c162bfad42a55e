"""Merged classification tasks load as plain Hugging Face models with neuroflow's logits (issue 13, item 18)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from eval_helpers import make_datamodule, quiet_trainer
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from neuroflow.evaluation import MergeModule, save_merged
from neuroflow.merging import TIES
from neuroflow.models import MultiTaskModule


def _module(tiny_bert: str, dm, pooling: str) -> MultiTaskModule:
    torch.manual_seed(1)
    module = MultiTaskModule(backbone=tiny_bert, tasks=dm.task_specs, pooling=pooling, head_dropout=0.1)
    with torch.no_grad():  # a "merged" backbone: anything but the pre-trained weights
        for param in module.hf_model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return module.eval()


def test_pooler_heads_load_as_bert_sequence_classifiers_with_the_same_logits(
    tiny_bert, shared_data_dir, eval_cache, tmp_path
):
    dm = make_datamodule(tiny_bert, shared_data_dir, eval_cache)
    dm.setup("test")
    module = _module(tiny_bert, dm, "pooler")
    out = tmp_path / "merged"
    card = save_merged(module, out, {"name": "test"})
    backbone_bytes = (out / "backbone" / "model.safetensors").stat().st_size
    for task, loader in zip(dm.task_names, dm.test_dataloader()):
        assert card["hf_models"][task]["status"] == "exported"
        folder = out / task
        hf = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        assert type(hf).__name__ == "BertForSequenceClassification"
        labels = dm.task_specs[dm.task_names.index(task)].label_names
        assert hf.config.id2label == dict(enumerate(labels))
        assert hf.config.label2id == {name: i for i, name in enumerate(labels)}
        batch = next(iter(loader))
        with torch.no_grad():
            ours = module(batch)
            theirs = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        token_type_ids=batch.get("token_type_ids")).logits
        torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-6)
        # Light on disk: the backbone is linked, not copied.
        own = sum(p.stat().st_size for p in folder.iterdir() if not p.is_symlink())
        assert own < backbone_bytes / 4, f"{task} folder holds {own} bytes of its own"
        assert (folder / "backbone-model.safetensors").is_symlink()
        # ... and it tokenizes like the evaluation data.
        tok = AutoTokenizer.from_pretrained(folder)
        assert tok("how far is the moon")["input_ids"] == dm.tokenizer("how far is the moon")["input_ids"]


def test_heads_without_an_equivalent_class_are_skipped_with_a_reason(tiny_bert, shared_data_dir, eval_cache, tmp_path):
    dm = make_datamodule(tiny_bert, shared_data_dir, eval_cache)
    module = _module(tiny_bert, dm, "cls")
    out = tmp_path / "merged"
    with pytest.warns(UserWarning, match="not exported as a Hugging Face model folder"):
        card = save_merged(module, out, {"name": "test"})
    for task in dm.task_names:
        record = card["hf_models"][task]
        assert record["status"] == "skipped" and "pooling 'cls'" in record["reason"]
        assert not (out / task).exists()


def test_merge_command_records_the_exported_tasks(trained_experts, tmp_path):
    model = MergeModule(experts=str(trained_experts), method=TIES())
    out = tmp_path / "merged"
    quiet_trainer().merge(model, evaluate=False, output_dir=str(out))
    card = json.loads((out / "merge_card.json").read_text())
    assert set(card["hf_models"]) == set(model.task_names)
    # These experts were fitted with CLS pooling: no HF class matches, and the card says so.
    assert all(r["status"] == "skipped" and "tanh" in r["reason"] for r in card["hf_models"].values())
