"""The backbone's weights under plain Hugging Face names: what experts store and merges combine.

The names are those `save_pretrained` writes (LoRA factors left out, not merged in; tied aliases
such as T5's or GPT-2's `lm_head` dropped), so a merged state dict loads into
`AutoModel*.from_pretrained` folders unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from neuroflow.models.backbone import dedupe_tied, tied_aliases
from neuroflow.models.lora import is_peft_model, plain_state_dict, plain_to_peft_keys, unwrap_peft


def plain_backbone_state(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """Detached tensors that share memory with `backbone`, under plain names."""
    state = unwrap_peft(backbone).state_dict()
    if is_peft_model(backbone):
        state = plain_state_dict(state)
    return {k: v.detach() for k, v in dedupe_tied(state).items()}


def backbone_state_keys(backbone: nn.Module, prefix: str = "backbone.") -> dict[str, str]:
    """Plain name -> the key of the same tensor in the LightningModule's `state_dict()` (for reading
    the backbone out of a gathered full state dict, e.g. under FSDP, where tensors share nothing)."""
    inner = "base_model.model." if is_peft_model(backbone) else ""
    mapping = plain_to_peft_keys(backbone)
    keep = plain_backbone_state(backbone)
    return {plain: f"{prefix}{inner}{mapping[plain]}" for plain in keep}


@torch.no_grad()
def load_plain_backbone_state(backbone: nn.Module, state: dict[str, torch.Tensor], strict: bool = True) -> None:
    """Copy plain-named weights into `backbone` (into the base layers under LoRA).

    Args:
        backbone: the (possibly peft-wrapped) Hugging Face model.
        state: key -> tensor, names as `plain_backbone_state` returns them.
        strict: require every backbone weight (tied aliases aside) to be given.

    Raises:
        ValueError: unknown keys, missing keys (strict) or shape mismatches, by name.
    """
    mapping = plain_to_peft_keys(backbone)
    target = unwrap_peft(backbone).state_dict()
    unknown = sorted(k for k in state if k not in mapping)
    if unknown:
        raise ValueError(f"load_backbone_state_dict: keys not in the backbone: {unknown[:10]}"
                         f"{' ...' if len(unknown) > 10 else ''}")
    if strict:
        plain = {k: target[v] for k, v in mapping.items()}
        aliases = tied_aliases(plain)
        missing = sorted(k for k in mapping if k not in state and aliases.get(k) not in state)
        if missing:
            raise ValueError(f"load_backbone_state_dict: missing keys {missing[:10]}"
                             f"{' ...' if len(missing) > 10 else ''}")
    for key, value in state.items():
        dest = target[mapping[key]]
        if dest.shape != value.shape:
            raise ValueError(f"load_backbone_state_dict: {key} has shape {tuple(value.shape)}, "
                             f"the backbone expects {tuple(dest.shape)}")
        dest.copy_(value.to(dtype=dest.dtype, device=dest.device))
