"""A content hash of a state dict, to check that experts share the same pre-trained base."""

from __future__ import annotations

import hashlib

import torch


def fingerprint_state_dict(state: dict[str, torch.Tensor]) -> str:
    """`sha256:<hex>` over every tensor's name, shape, dtype and bytes, in sorted name order.

    Use it on `MultiTaskModule.backbone_state_dict()` of the pre-trained model (plain names,
    tied aliases dropped), so the fit side and the merge side hash the same thing.

    Args:
        state: name -> tensor.
    """
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach()
        digest.update(f"{name}|{tuple(tensor.shape)}|{str(tensor.dtype)}\n".encode())
        flat = tensor.to("cpu").contiguous().reshape(-1)
        if flat.numel():
            # A byte view works for every dtype, bfloat16 included (numpy has no bfloat16).
            digest.update(flat.view(torch.uint8).numpy().tobytes())
    return "sha256:" + digest.hexdigest()
