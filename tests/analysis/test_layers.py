"""Grouping tensor names into layers on each naming scheme (and on real tiny models)."""

import pytest
import torch

from neuroflow.analysis import layer_of, order_layers, short_layer_name

CASES = {
    # BERT / MiniLM / ViT (transformers 4.x ViTModel)
    "embeddings.word_embeddings.weight": "embeddings",
    "encoder.layer.3.attention.self.query.weight": "encoder.layer.3",
    "encoder.layer.11.output.LayerNorm.bias": "encoder.layer.11",
    "pooler.dense.weight": "other",
    "embeddings.patch_embeddings.projection.weight": "embeddings",
    "layernorm.weight": "other",
    # T5: encoder and decoder blocks apart; the nested `layer.N` does not split a block
    "shared.weight": "embeddings",
    "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": "encoder.block.0",
    "encoder.block.2.layer.1.DenseReluDense.wi.weight": "encoder.block.2",
    "decoder.block.2.layer.2.DenseReluDense.wo.weight": "decoder.block.2",
    "encoder.final_layer_norm.weight": "other",
    # CLIP vision tower
    "vision_model.embeddings.patch_embedding.weight": "embeddings",
    "vision_model.embeddings.position_embedding.weight": "embeddings",
    "vision_model.encoder.layers.7.mlp.fc1.weight": "vision_model.encoder.layers.7",
    "vision_model.post_layernorm.bias": "other",
    "visual_projection.weight": "other",
    # LLaMA / Mistral
    "model.embed_tokens.weight": "embeddings",
    "model.layers.31.self_attn.q_proj.weight": "model.layers.31",
    "model.norm.weight": "other",
    "lm_head.weight": "other",
    # GPT-2 (bare GPT2Model and under GPT2LMHeadModel)
    "wte.weight": "embeddings",
    "wpe.weight": "embeddings",
    "h.0.attn.c_attn.weight": "h.0",
    "transformer.h.11.mlp.c_proj.bias": "transformer.h.11",
    "transformer.ln_f.weight": "other",
    # MPT / timm style
    "blocks.4.attn.qkv.weight": "blocks.4",
    # ViT under transformers 5
    "layers.0.attention.q_proj.weight": "layers.0",
}


@pytest.mark.parametrize("name,group", CASES.items())
def test_layer_of_each_naming_scheme(name, group):
    assert layer_of(name) == group


def test_a_name_part_that_only_starts_like_a_container_is_not_one():
    assert layer_of("encoder.layernorm.3.weight") == "other"
    assert layer_of("heads.0.weight") == "other"


def test_order_layers_reads_like_the_model():
    groups = ["other", "encoder.layer.10", "encoder.layer.9", "embeddings", "encoder.layer.0"]
    assert order_layers(groups) == ["embeddings", "encoder.layer.0", "encoder.layer.9", "encoder.layer.10", "other"]
    # Stacks keep the order they first appear in (encoder before decoder in a T5 state dict).
    t5 = ["shared", "encoder.block.1", "encoder.block.0", "decoder.block.0", "decoder.block.1"]
    assert order_layers(layer_of(n + ".w") for n in t5) == [
        "embeddings", "encoder.block.0", "encoder.block.1", "decoder.block.0", "decoder.block.1"]


@pytest.mark.parametrize("group,label", [
    ("encoder.layer.3", "enc.3"), ("decoder.block.0", "dec.0"), ("model.layers.7", "layers.7"),
    ("transformer.h.11", "h.11"), ("h.2", "h.2"), ("vision_model.encoder.layers.3", "vision.enc.3"),
    ("embeddings", "embeddings"), ("other", "other"),
])
def test_short_layer_names(group, label):
    assert short_layer_name(group) == label


def _groups(model: torch.nn.Module) -> list[str]:
    return order_layers(layer_of(name) for name in model.state_dict())


def test_real_t5_and_vit_state_dicts(tiny_t5, tiny_vit):
    from transformers import AutoModel, AutoModelForSeq2SeqLM

    assert _groups(AutoModelForSeq2SeqLM.from_pretrained(tiny_t5)) == [
        "embeddings", "encoder.block.0", "encoder.block.1", "decoder.block.0", "decoder.block.1", "other"]
    # transformers 5 names ViT blocks `layers.N` (4.x: `encoder.layer.N`, covered above).
    assert _groups(AutoModel.from_pretrained(tiny_vit)) == ["embeddings", "layers.0", "layers.1", "other"]


def test_real_gpt2_llama_and_clip_state_dicts():
    from transformers import (CLIPVisionConfig, CLIPVisionModel, GPT2Config, GPT2Model, LlamaConfig, LlamaModel)

    torch.manual_seed(0)
    gpt2 = GPT2Model(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=50, n_positions=16))
    assert _groups(gpt2) == ["embeddings", "h.0", "h.1", "other"]
    llama = LlamaModel(LlamaConfig(num_hidden_layers=2, hidden_size=16, intermediate_size=32, num_attention_heads=2,
                                   num_key_value_heads=2, vocab_size=50))
    assert _groups(llama) == ["embeddings", "layers.0", "layers.1", "other"]
    clip = CLIPVisionModel(CLIPVisionConfig(num_hidden_layers=2, hidden_size=16, intermediate_size=32,
                                            num_attention_heads=2, image_size=8, patch_size=4))
    # transformers 5 drops the `vision_model.` prefix of CLIPVisionModel (4.x keeps it, covered above).
    assert _groups(clip) == ["embeddings", "encoder.layers.0", "encoder.layers.1", "other"]
