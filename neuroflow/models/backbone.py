"""Loading a Hugging Face backbone per model family, and its plain state dict."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM, PretrainedConfig

from neuroflow.hub import resolve_model_path

Family = Literal["auto", "encoder", "seq2seq", "vision", "causal_lm"]
FAMILIES = ("auto", "encoder", "seq2seq", "vision", "causal_lm")

# Decoder-only model types, for configs saved without `architectures`; otherwise a checkpoint whose
# architecture is a `...ForCausalLM` / `...LMHeadModel` is a causal LM too.
CAUSAL_LM_MODEL_TYPES = {
    "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gpt2", "gpt_neo", "gpt_neox",
    "gptj", "gpt_bigcode", "codegen", "opt", "bloom", "falcon", "phi", "phi3", "gemma", "gemma2", "gemma3_text",
    "olmo", "olmo2", "stablelm", "starcoder2", "mpt", "cohere", "granite", "smollm3",
}
_CAUSAL_ARCH_SUFFIXES = ("ForCausalLM", "LMHeadModel")

# Config model types whose AutoModel takes `pixel_values`. A vision model outside this list still
# works with `family: vision` written explicitly.
VISION_MODEL_TYPES = {
    "vit", "deit", "beit", "dinov2", "dinov3_vit", "convnext", "convnextv2", "resnet", "swin",
    "swinv2", "regnet", "mobilevit", "efficientnet", "levit", "poolformer", "pvt", "clip",
    "clip_vision_model", "siglip", "siglip_vision_model", "vit_mae", "vit_msn", "data2vec-vision",
}


def is_causal_lm_config(config: PretrainedConfig) -> bool:
    """Whether a config describes a decoder-only language model."""
    if getattr(config, "is_encoder_decoder", False):
        return False
    architectures = getattr(config, "architectures", None) or []
    if architectures:
        return any(a.endswith(_CAUSAL_ARCH_SUFFIXES) for a in architectures) or (
            config.model_type in CAUSAL_LM_MODEL_TYPES)
    return config.model_type in CAUSAL_LM_MODEL_TYPES


def resolve_family(config: PretrainedConfig, family: str = "auto") -> str:
    """The concrete family (`encoder`, `seq2seq`, `vision` or `causal_lm`) of a model config.

    Args:
        config: the backbone's Hugging Face config.
        family: `auto` to infer it, or a family to check against the config.

    Raises:
        ValueError: an unknown family, or one that contradicts the config.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; choose one of {list(FAMILIES)}")
    is_seq2seq = bool(getattr(config, "is_encoder_decoder", False))
    is_vision = config.model_type in VISION_MODEL_TYPES
    if family == "auto":
        if is_seq2seq:
            return "seq2seq"
        if is_vision:
            return "vision"
        return "causal_lm" if is_causal_lm_config(config) else "encoder"
    if family == "causal_lm" and (is_seq2seq or is_vision):
        raise ValueError(
            f"family 'causal_lm' needs a decoder-only language model, but {config.model_type!r} is "
            f"{'an encoder-decoder' if is_seq2seq else 'a vision'} model"
        )
    if family == "seq2seq" and not is_seq2seq:
        raise ValueError(
            f"family 'seq2seq' needs an encoder-decoder model, but {config.model_type!r} is not one"
        )
    if family == "encoder" and is_seq2seq:
        raise ValueError(
            f"family 'encoder' was given for the encoder-decoder model {config.model_type!r}; "
            "use family 'seq2seq' (classification heads then read the encoder)"
        )
    return family


def load_backbone(
    name_or_path: str, family: str = "auto", **kwargs: Any
) -> tuple[nn.Module, str]:
    """Load a pre-trained backbone and return it with its concrete family.

    Args:
        name_or_path: a local folder, a hub id, or `pkg://<module>` (see `neuroflow.hub`).
        family: `auto`, `encoder` (AutoModel), `seq2seq` (AutoModelForSeq2SeqLM), `vision`
            (AutoModel; `CLIPVisionModel`/`SiglipVisionModel` for CLIP/SigLIP configs) or
            `causal_lm` (AutoModelForCausalLM).
        **kwargs: passed to `from_pretrained` (e.g. `dtype`, `revision`, `attn_implementation`).
    """
    path = resolve_model_path(name_or_path)
    config = AutoConfig.from_pretrained(path)
    family = resolve_family(config, family)
    if family == "seq2seq":
        model = AutoModelForSeq2SeqLM.from_pretrained(path, **kwargs)
    elif family == "causal_lm":
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    elif family == "vision" and config.model_type == "clip":
        from transformers import CLIPVisionModel

        model = CLIPVisionModel.from_pretrained(path, **kwargs)
    elif family == "vision" and config.model_type == "siglip":
        from transformers import SiglipVisionModel

        model = SiglipVisionModel.from_pretrained(path, **kwargs)
    else:
        model = AutoModel.from_pretrained(path, **kwargs)
    return model, family


def hidden_size_of(config: PretrainedConfig) -> int:
    """Width of the features a head reads (vision sub-configs and CNNs included)."""
    config = getattr(config, "vision_config", None) or config
    for name in ("hidden_size", "d_model", "dim"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    sizes = getattr(config, "hidden_sizes", None)
    if sizes:
        return int(sizes[-1])
    raise ValueError(f"cannot tell the hidden size of a {config.model_type!r} model")


def _identity(tensor: torch.Tensor) -> tuple[int, int, tuple[int, ...]]:
    return (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))


def dedupe_tied(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` with tied aliases dropped (first name kept, as `save_pretrained` does).

    T5 ties `shared`, both `embed_tokens` and `lm_head`: merging them once is enough, and
    safetensors refuses tensors that share memory.
    """
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        ident = _identity(tensor)
        if ident not in seen:
            seen.add(ident)
            out[key] = tensor
    return out


def tied_aliases(state: dict[str, torch.Tensor]) -> dict[str, str]:
    """Alias key -> the key `dedupe_tied` keeps for it."""
    first: dict[tuple[int, int, tuple[int, ...]], str] = {}
    aliases: dict[str, str] = {}
    for key, tensor in state.items():
        ident = _identity(tensor)
        if ident in first:
            aliases[key] = first[ident]
        else:
            first[ident] = key
    return aliases
