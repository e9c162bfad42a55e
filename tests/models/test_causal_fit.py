"""Tiny LLaMA / Mistral / Qwen2 / GPT-2 fine-tuned on real rows, fully and with LoRA, through the
Trainer: the loss on the target tokens goes down and the collected expert is exactly the trained
decoder (task vector or peft adapter; GPT-2's Conv1D adapters included)."""

import copy
from functools import partial

import pytest
import torch
from lightning.pytorch import seed_everything

from neuroflow.callbacks import ExpertCollector
from neuroflow.experts import load_expert_head, load_manifest, load_task_vector
from neuroflow.models import AdamW, MultiTaskModule

from causal_helpers import CAUSAL_ARCHS, sst2_choice


@torch.no_grad()
def mean_loss(module: MultiTaskModule, batches: list[dict]) -> float:
    module.eval()
    value = sum(float(module.loss(b)) for b in batches) / len(batches)
    module.train()
    return value


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("arch", CAUSAL_ARCHS)
def test_fit_lowers_loss_and_collects_exact_expert(arch, lora, causal_models, make_datamodule, make_trainer, tmp_path):
    path = causal_models[arch]
    seed_everything(0)
    dm = make_datamodule([sst2_choice()], tokenizer=path, max_length=48, max_target_length=8, batch_size=8,
                         max_train_examples=32, max_eval_examples=16)
    module = MultiTaskModule(path, tasks=dm.task_specs, lora={"r": 4, "lora_alpha": 8} if lora else None,
                             optimizer=partial(AdamW, lr=2e-2 if lora else 3e-3), lr_scheduler=None)
    base = {k: v.clone() for k, v in module.backbone_state_dict().items()}
    dm.setup("fit")
    batches = list(dm.train_dataloader())[:3]
    before = mean_loss(module, batches)

    experts = tmp_path / "experts"
    make_trainer(max_epochs=3, callbacks=[ExpertCollector(str(experts), monitor=None)]).fit(module, dm)
    after = mean_loss(module, batches)
    assert after < before - 0.1, (before, after)
    assert set(module.last_metrics["val"]) >= {"val/sst2_choice/acc", "val/sst2_choice/acc_norm", "val/avg/score"}

    [entry] = load_manifest(experts)
    assert entry["family"] == "causal_lm" and entry["mode"] == ("lora" if lora else "full")
    assert entry["backbone"]["format"] == ("lora" if lora else "task_vector")
    assert load_expert_head(experts, entry) is None  # the LM head is shared, no task head
    tv = load_task_vector(experts, entry, base)
    if lora:
        assert all(torch.equal(base[k], v) for k, v in module.backbone_state_dict().items())
        expected = copy.deepcopy(module.backbone).merge_and_unload().state_dict()
    else:
        expected = module.backbone_state_dict()
    assert sum(float(v.abs().sum()) for v in tv.values()) > 0
    for key, delta in tv.items():
        torch.testing.assert_close(base[key] + delta, expected[key], rtol=1e-5, atol=1e-6)


def test_packed_bf16_mixed_fit_and_truncation_counts(tiny_llama, make_datamodule, make_trainer):
    """bf16 mixed precision (CPU autocast here, GPUs in real runs), packed training rows, and the
    left-truncated prompts counted by the model's metrics as by the data."""
    seed_everything(0)
    task = sst2_choice(kind="instruction", metrics=None, packing=True, max_new_tokens=3)
    dm = make_datamodule([task], tokenizer=tiny_llama, max_length=128, max_target_length=8, batch_size=4,
                         max_train_examples=32, max_eval_examples=16)
    module = MultiTaskModule(tiny_llama, tasks=dm.task_specs, lora={"r": 4}, optimizer=partial(AdamW, lr=1e-2),
                             lr_scheduler=None)
    make_trainer(max_epochs=1, precision="bf16-mixed").fit(module, dm)
    train = dm.split_data("train")["sst2_choice"]
    assert len(train) < 32 and max(len(x) for x in train["input_ids"]) <= 128  # packed
    assert sum(train["prompt_truncated"]) == dm.truncation_counts["sst2_choice"]["train"]["prompt_truncated"]
    truncated = dm.truncation_counts["sst2_choice"]["validation"]["prompt_truncated"]
    assert module.last_truncation["val"] == {"sst2_choice": truncated}
    assert 0.0 <= module.last_metrics["val"]["val/sst2_choice/exact_match"] <= 1.0
