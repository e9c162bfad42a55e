"""Cosine similarity of task vectors, from Gram matrices that add up over tensors and layers.

`G[a, b] = <tau_a, tau_b>` summed over any set of tensors gives the cosine over that set
(`G[a, b] / sqrt(G[a, a] G[b, b])`), so one `(T, T)` accumulator per layer yields both the per-layer
and the whole-model similarities without holding more than one tensor's task vectors.
"""

from __future__ import annotations

import torch
from torch import Tensor

_CHUNK = 1 << 18  # entries per task converted to float64 at once


def gram(x: Tensor) -> Tensor:
    """`X X^T` of the flattened task values, float64, shape `(T, T)`.

    Args:
        x: per-task values, shape `(T, ...)`.
    """
    flat = x.detach().reshape(x.shape[0], -1)
    out = torch.zeros(flat.shape[0], flat.shape[0], dtype=torch.float64)
    for start in range(0, flat.shape[1], _CHUNK):
        block = flat[:, start : start + _CHUNK].to(torch.float64)
        out += block @ block.T
    return out


def cosine_matrix(g: Tensor) -> Tensor:
    """Pairwise cosine similarities from a Gram matrix; NaN in rows/columns of zero vectors.

    Args:
        g: `(T, T)` Gram matrix (`gram`, possibly summed over tensors).
    """
    norm = g.diagonal().clamp(min=0).sqrt()
    outer = norm[:, None] * norm[None, :]
    cos = torch.where(outer > 0, g / torch.where(outer > 0, outer, 1.0), torch.nan)
    return cos.clamp(-1.0, 1.0)
