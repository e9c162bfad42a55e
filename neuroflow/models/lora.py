"""LoRA through peft: checked targets, and the plain (adapter-free) view of a wrapped backbone."""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

# Module types peft's LoRA can wrap; the names of such modules are what `target_modules` matches.
_LORA_LAYER_TYPES: tuple[type, ...] = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d)
try:  # GPT-2 style Conv1D (transposed linear)
    from transformers.pytorch_utils import Conv1D

    _LORA_LAYER_TYPES = (*_LORA_LAYER_TYPES, Conv1D)
except ImportError:  # pragma: no cover
    pass

# Segments peft adds inside a wrapped model's state dict.
_ADAPTER_PARTS = re.compile(r"\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector|modules_to_save)\.")


def lora_target_names(model: nn.Module) -> list[str]:
    """Sorted short names (last path component) of the modules LoRA could target."""
    return sorted({name.rsplit(".", 1)[-1] for name, mod in model.named_modules()
                   if name and isinstance(mod, _LORA_LAYER_TYPES)})


def check_lora_targets(model: nn.Module, lora: dict[str, Any]) -> None:
    """Raise before training when `target_modules` names modules the backbone does not have.

    peft only fails when *no* target matches; a typo in one of several names would silently
    train fewer layers than asked, so every listed name must match at least one module.

    Args:
        model: the backbone, before peft wraps it.
        lora: LoraConfig keyword arguments.

    Raises:
        ValueError: names the missing targets and lists the module names that exist.
    """
    targets = lora.get("target_modules")
    if targets is None or targets == "all-linear":
        return
    names = [name for name, _ in model.named_modules() if name]
    if isinstance(targets, str):
        if not any(re.fullmatch(targets, name) for name in names):
            raise ValueError(
                f"lora.target_modules regex {targets!r} matches no module of the backbone; "
                f"available module names: {lora_target_names(model)}"
            )
        return
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise ValueError(
            f"lora.target_modules {missing} not found in the backbone "
            f"({type(model).__name__}); available module names: {lora_target_names(model)}"
        )


def apply_lora(model: nn.Module, lora: dict[str, Any]) -> nn.Module:
    """Wrap `model` with peft LoRA adapters (base weights frozen) after checking the targets.

    Args:
        model: the Hugging Face backbone.
        lora: LoraConfig keyword arguments (`r`, `lora_alpha`, `target_modules`, `lora_dropout`, ...).
    """
    from peft import LoraConfig, get_peft_model

    if not isinstance(lora, dict):
        raise ValueError(f"lora must be a mapping of LoraConfig arguments, got {type(lora).__name__}")
    check_lora_targets(model, lora)
    try:
        config = LoraConfig(**lora)
    except TypeError as err:
        raise ValueError(f"lora: invalid LoraConfig arguments {sorted(lora)}: {err}") from err
    return get_peft_model(model, config)


def is_peft_model(model: nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, PeftModel)


def unwrap_peft(model: nn.Module) -> nn.Module:
    """The Hugging Face model inside a peft wrapper (adapters injected in place), else `model`."""
    return model.get_base_model() if is_peft_model(model) else model


def plain_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop adapter tensors from a peft-injected model's state dict and restore the plain names.

    `...query.base_layer.weight` -> `...query.weight`; `...pooler.original_module.dense.weight`
    -> `...pooler.dense.weight`; LoRA factors and `modules_to_save` copies are dropped.
    """
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if _ADAPTER_PARTS.search("." + key + "."):
            continue
        out[key.replace(".base_layer.", ".").replace(".original_module.", ".")] = tensor
    return out


def plain_to_peft_keys(model: nn.Module) -> dict[str, str]:
    """Plain key -> key inside the peft-injected model (identity for an unwrapped model)."""
    mapping: dict[str, str] = {}
    for key in unwrap_peft(model).state_dict():
        if _ADAPTER_PARTS.search("." + key + "."):
            continue
        mapping[key.replace(".base_layer.", ".").replace(".original_module.", ".")] = key
    return mapping
