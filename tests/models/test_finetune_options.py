"""Merge-friendly fine-tuning: `trainable` patterns, `freeze_head`, `head_init: linear_probe` (LP-FT)."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from lightning.pytorch import seed_everything

from neuroflow.models import AdamW, MultiTaskModule
from neuroflow.models.finetune_options import ATTENTION, fit_linear_head, probe_features, restrict_trainable


def _snapshot(module: MultiTaskModule) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def _changed(before: dict[str, torch.Tensor], module: MultiTaskModule) -> set[str]:
    return {n for n, p in module.named_parameters() if not torch.equal(before[n], p.detach())}


def test_attention_preset_matches_each_family():
    names = {
        "bert": "encoder.layer.0.attention.self.query.weight",
        "vit": "encoder.layer.0.attention.attention.query.weight",
        "t5": "encoder.block.0.layer.0.SelfAttention.q.weight",
        "t5-cross": "decoder.block.0.layer.1.EncDecAttention.k.weight",
        "llama": "model.layers.0.self_attn.q_proj.weight",
        "gpt2": "h.0.attn.c_attn.weight",
        "clip": "vision_model.encoder.layers.0.self_attn.k_proj.weight",
    }
    assert all(ATTENTION.search(n) for n in names.values())
    for other in ("encoder.layer.0.intermediate.dense.weight", "model.layers.0.mlp.up_proj.weight",
                  "h.0.mlp.c_fc.weight", "embeddings.word_embeddings.weight"):
        assert not ATTENTION.search(other)


def test_attention_only_fit_leaves_everything_else_pre_trained(tiny_bert, make_datamodule, make_trainer):
    seed_everything(0)
    dm = make_datamodule(["trec"], tokenizer=tiny_bert)
    module = MultiTaskModule(tiny_bert, tasks=dm.task_specs, trainable="attention",
                             optimizer=partial(AdamW, lr=1e-2), lr_scheduler=None)
    before = _snapshot(module)
    make_trainer(max_epochs=1).fit(module, dm)
    changed = _changed(before, module)
    backbone_changed = {n for n in changed if n.startswith("backbone.")}
    assert backbone_changed and all(".attention." in n for n in backbone_changed)
    assert any(n.startswith("heads.") for n in changed)  # heads still train


def test_lora_with_trainable_patterns_keeps_only_matching_adapters(tiny_bert):
    module = MultiTaskModule(tiny_bert, tasks=["trec"], lora={"r": 2, "lora_alpha": 4, "target_modules": ["query", "dense"]},
                             trainable=["*attention.self.query*"])
    trainable = [n for n, p in module.backbone.named_parameters() if p.requires_grad]
    assert trainable and all("attention.self.query" in n and "lora_" in n for n in trainable)


def test_patterns_that_match_nothing_are_refused(tiny_bert):
    with pytest.raises(ValueError, match=r"trainable \['\*nothing\*'\] matches no trainable backbone parameter"):
        MultiTaskModule(tiny_bert, tasks=["trec"], trainable=["*nothing*"])
    with pytest.raises(ValueError, match="head_init"):
        MultiTaskModule(tiny_bert, tasks=["trec"], head_init="zeros")


def test_fit_linear_head_separates_separable_features():
    torch.manual_seed(0)
    x = torch.randn(200, 8)
    y = (x[:, 0] + 0.5 * x[:, 3] > 0).long()
    linear = torch.nn.Linear(8, 2)
    start = torch.nn.functional.cross_entropy(linear(x), y).item()
    loss = fit_linear_head(linear, x, y, epochs=300, lr=0.1)
    assert loss < start / 3
    assert (linear(x).argmax(-1) == y).float().mean() > 0.97
    with pytest.raises(ValueError, match="no training features"):
        fit_linear_head(linear, x[:0], y[:0])


def test_lp_ft_probes_the_head_then_keeps_it_frozen(tiny_bert, make_datamodule, make_trainer):
    seed_everything(0)
    dm = make_datamodule(["trec"], tokenizer=tiny_bert)
    module = MultiTaskModule(tiny_bert, tasks=dm.task_specs, head_init="linear_probe", freeze_head=True,
                             linear_probe_epochs=50, optimizer=partial(AdamW, lr=1e-3), lr_scheduler=None)
    # What the probe must produce: the same fit on features of the frozen pre-trained backbone.
    dm.setup("fit")
    reference = MultiTaskModule(tiny_bert, tasks=dm.task_specs)
    reference.heads.load_state_dict(module.heads.state_dict())
    feats = probe_features(reference, dm.train_dataloader())
    fit_linear_head(reference.heads["trec"].linear, *feats["trec"], epochs=50)
    backbone_before = {n: p.detach().clone() for n, p in module.backbone.named_parameters()}

    make_trainer(max_epochs=1).fit(module, dm)
    probed = reference.heads["trec"].linear
    head = module.heads["trec"].linear
    # probed once at fit start, then frozen through the fine-tuning
    torch.testing.assert_close(head.weight, probed.weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(head.bias, probed.bias, rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(backbone_before[n], p) for n, p in module.backbone.named_parameters())
