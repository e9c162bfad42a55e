"""Tiny Hugging Face checkpoints made in the tests: LLaMA (sharded and not), BERT, a peft LoRA adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file


def tiny_llama_config(**overrides):
    from transformers import LlamaConfig

    kwargs = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4, max_position_embeddings=64, tie_word_embeddings=False)
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def perturbed(model: torch.nn.Module, seed: int, scale: float = 0.02) -> torch.nn.Module:
    """`model` with every float parameter moved by seeded noise (a stand-in for a fine-tune)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype))
    return model


def save(model, path: Path, **kwargs) -> Path:
    model.save_pretrained(str(path), **kwargs)
    return path


def folder_state(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor saved in a model folder (single file or shards)."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        state = {}
        for file in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            state.update(load_file(str(path / file)))
        return state
    return load_file(str(path / "model.safetensors"))


def write_tokenizer(path: Path, vocab_size: int = 128, extra: str = "") -> None:
    """A minimal word-level tokenizer.json (enough to compare hashes and to be copied)."""
    vocab = {f"t{i}{extra}": i for i in range(vocab_size)}
    data = {"version": "1.0", "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "t0"}}
    (path / "tokenizer.json").write_text(json.dumps(data))


@pytest.fixture(scope="session")
def llama(tmp_path_factory) -> dict:
    """A tiny LLaMA base and three perturbed experts: single-file, sharded (50KB) and bf16 copies."""
    from transformers import LlamaForCausalLM

    root = tmp_path_factory.mktemp("llama")
    torch.manual_seed(0)
    config = tiny_llama_config()
    base = LlamaForCausalLM(config).eval()
    out = {"base": save(base, root / "base"), "experts": [], "sharded": [], "config": config}
    write_tokenizer(out["base"])
    (out["base"] / "generation_config.json").write_text(json.dumps({"max_new_tokens": 8}))
    for i in range(3):
        expert = LlamaForCausalLM(config)
        expert.load_state_dict(base.state_dict())
        perturbed(expert, seed=10 + i)
        out["experts"].append(save(expert, root / f"expert{i}"))
        out["sharded"].append(save(expert, root / f"sharded{i}", max_shard_size="50KB"))
    out["base_sharded"] = save(base, root / "base_sharded", max_shard_size="50KB")
    return out


@pytest.fixture(scope="session")
def adapter(llama, tmp_path_factory) -> Path:
    """A peft LoRA adapter (q_proj, v_proj; B made non-zero) on the tiny LLaMA base."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    path = tmp_path_factory.mktemp("adapter") / "lora"
    model = LlamaForCausalLM.from_pretrained(str(llama["base"]))
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    peft_model.save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def bert(tmp_path_factory) -> dict:
    """A tiny BERT encoder base and two perturbed experts."""
    from transformers import BertConfig, BertModel

    root = tmp_path_factory.mktemp("bert")
    config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=48, max_position_embeddings=32)
    torch.manual_seed(1)
    base = BertModel(config).eval()
    out = {"base": save(base, root / "base"), "experts": []}
    for i in range(2):
        expert = BertModel(config)
        expert.load_state_dict(base.state_dict())
        out["experts"].append(save(perturbed(expert, seed=20 + i), root / f"expert{i}"))
    return out
