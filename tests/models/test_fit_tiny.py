"""Tiny BERT / T5 / ViT fine-tune on real rows, fully and with LoRA: the loss goes down and the
collected expert loads back to exactly the trained backbone."""

import copy
from functools import partial

import pytest
import torch
from lightning.pytorch import seed_everything

from neuroflow.callbacks import ExpertCollector
from neuroflow.experts import load_expert_head, load_manifest, load_task_vector
from neuroflow.models import AdamW, MultiTaskModule

LORA_BERT = {"r": 4, "lora_alpha": 8, "target_modules": ["query", "value"]}
LORA_VIT = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "fc1", "fc2"]}
LORA_T5 = {"r": 4, "lora_alpha": 8, "target_modules": ["q", "v"]}
CASES = {  # model fixture, tasks, lora, extra DataModule arguments
    "bert-full": ("tiny_bert", ["trec"], None, {}),
    "bert-lora": ("tiny_bert", ["trec"], LORA_BERT, {}),
    "t5-full-text2text": ("tiny_t5", ["sst2"], None, {"as_text2text": True}),
    "t5-lora-text2text": ("tiny_t5", ["sst2"], LORA_T5, {"as_text2text": True}),
    "vit-full": ("tiny_vit", ["sklearn_digits"], None, {}),
    "vit-lora": ("tiny_vit", ["sklearn_digits"], LORA_VIT, {}),
}


def first_batches(dm, n: int = 3) -> list[dict]:
    dm.setup("fit")
    batches = []
    for batch in dm.train_dataloader():
        batches.append(batch)
        if len(batches) == n:
            break
    return batches


@torch.no_grad()
def mean_loss(module: MultiTaskModule, batches: list[dict]) -> float:
    module.eval()
    value = sum(float(module.loss(b)) for b in batches) / len(batches)
    module.train()
    return value


@pytest.mark.parametrize("case", list(CASES))
def test_fit_lowers_loss_and_collects_exact_expert(case, request, make_datamodule, make_trainer, tmp_path):
    fixture, tasks, lora, data_kwargs = CASES[case]
    model_path = request.getfixturevalue(fixture)
    seed_everything(0)
    tokenizer = None if fixture == "tiny_vit" else model_path
    dm = make_datamodule(tasks, tokenizer=tokenizer, **data_kwargs)
    module = MultiTaskModule(model_path, tasks=dm.task_specs, lora=lora,
                             optimizer=partial(AdamW, lr=1e-2 if lora else 3e-3), lr_scheduler=None)
    base = {k: v.clone() for k, v in module.backbone_state_dict().items()}
    batches = first_batches(dm)
    before = mean_loss(module, batches)

    experts = tmp_path / "experts"
    make_trainer(max_epochs=3, callbacks=[ExpertCollector(str(experts), monitor=None)]).fit(module, dm)
    after = mean_loss(module, batches)
    assert after < before - 0.1, (before, after)  # drops of 0.2-4 nats measured

    [entry] = load_manifest(experts)
    assert entry["name"] == tasks[0] and entry["mode"] == ("lora" if lora else "full")
    assert entry["backbone"]["format"] == ("lora" if lora else "task_vector")
    tv = load_task_vector(experts, entry, base)
    if lora:
        # Base weights stay frozen; the adapter as a dense delta equals peft's own merge.
        assert all(torch.equal(base[k], v) for k, v in module.backbone_state_dict().items())
        expected = copy.deepcopy(module.backbone).merge_and_unload().state_dict()
    else:
        expected = module.backbone_state_dict()
    assert sum(float(v.abs().sum()) for v in tv.values()) > 0
    for key, delta in tv.items():
        torch.testing.assert_close(base[key] + delta, expected[key], rtol=1e-5, atol=1e-6)

    head = load_expert_head(experts, entry)
    if dm.task_specs[0].kind == "text2text":
        assert head is None and entry["head"] is None
    else:
        assert torch.equal(head.linear.weight, module.heads[tasks[0]].linear.weight)
