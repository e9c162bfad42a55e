"""LoRA adapters -> dense task vectors must equal peft's own merge (`merge_and_unload`)."""

import json

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from torch import nn
from transformers.pytorch_utils import Conv1D

from neuroflow.experts.lora_delta import lora_adapter_deltas


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(11, 6)
        self.proj = nn.Linear(6, 5)
        self.c_attn = Conv1D(7, 6)  # GPT-2 style: weight is in x out
        self.conv = nn.Conv2d(3, 4, 3)
        self.conv1 = nn.Conv2d(3, 4, 1)


CASES = {
    "linear_and_embedding": dict(target_modules=["proj", "emb"]),
    "fan_in_fan_out": dict(target_modules=["c_attn"], fan_in_fan_out=True),
    "rslora_with_patterns": dict(target_modules=["proj", "emb"], r=4, use_rslora=True,
                                 alpha_pattern={"emb": 7}, rank_pattern={"emb": 3}),
    "conv": dict(target_modules=["conv", "conv1"]),
    "dora_linear": dict(target_modules=["proj"], use_dora=True),
    "dora_embedding": dict(target_modules=["emb"], use_dora=True),
    "bias_and_modules_to_save": dict(target_modules=["proj"], bias="lora_only", modules_to_save=["c_attn"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_dense_delta_equals_peft_merge(case, tmp_path):
    torch.manual_seed(0)
    model = Tiny()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    kwargs = {"r": 2, "lora_alpha": 3, **CASES[case]}
    peft_model = get_peft_model(model, LoraConfig(**kwargs))
    with torch.no_grad():  # B starts at zero: give every trained tensor real values
        for name, param in peft_model.named_parameters():
            trained_bias = case.startswith("bias") and name.endswith("base_layer.bias")
            if "lora_" in name or "modules_to_save" in name or trained_bias:
                param.add_(torch.randn_like(param) * 0.3)
    peft_model.save_pretrained(tmp_path)
    deltas = lora_adapter_deltas(tmp_path, base)
    merged = peft_model.merge_and_unload().state_dict()
    changed = sorted(k for k in base if not torch.equal(merged[k], base[k]))
    assert changed and sorted(deltas) == changed
    for key in base:
        torch.testing.assert_close(base[key] + deltas.get(key, 0), merged[key], rtol=1e-5, atol=1e-6)


def test_scaling_by_hand(tmp_path):
    # delta = B @ A * alpha / r = [[1],[2]] @ [[1, 1, 1]] * 4 / 1
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "lora_alpha": 4, "r": 1}))
    save_file({"base_model.model.layer.lora_A.weight": torch.ones(1, 3),
               "base_model.model.layer.lora_B.weight": torch.tensor([[1.0], [2.0]])},
              str(tmp_path / "adapter_model.safetensors"))
    deltas = lora_adapter_deltas(tmp_path, {"layer.weight": torch.zeros(2, 3)})
    assert torch.equal(deltas["layer.weight"], torch.tensor([[4.0, 4.0, 4.0], [8.0, 8.0, 8.0]]))


def test_adapter_for_an_unknown_weight_is_named(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "lora_alpha": 1, "r": 1}))
    save_file({"base_model.model.nope.lora_A.weight": torch.ones(1, 3),
               "base_model.model.nope.lora_B.weight": torch.ones(2, 1)},
              str(tmp_path / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match="'nope.weight' matches no backbone weight"):
        lora_adapter_deltas(tmp_path, {"layer.weight": torch.zeros(2, 3)})


def test_non_lora_adapters_are_refused(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3"}))
    with pytest.raises(ValueError, match="IA3"):
        lora_adapter_deltas(tmp_path, {})
