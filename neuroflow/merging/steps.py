"""Pure tensor steps shared by the merge methods: magnitude trim, sign election, disjoint mean.

Every function takes the per-task values stacked on dim 0 (`x` of shape `(T, ...)`) and never
looks at parameter names, so TIES, DARE-TIES and NeuroMerging compose the same implementation.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def kth_index(numel: int, mask_rate: float) -> int:
    """The 1-based rank `k = floor(numel * mask_rate)` of the magnitude threshold (0: keep all).

    Args:
        numel: number of scalars the threshold is taken over.
        mask_rate: fraction of entries dropped by magnitude, in [0, 1].
    """
    # Evaluated in float like the reference (`int(P * r)`), so both pick the same k.
    return min(numel, max(0, math.floor(numel * mask_rate)))


def trim_tasks_(x: Tensor, thresholds: list[Tensor | float | None]) -> Tensor:
    """Zero, in place, every entry of task row t with `|x| < thresholds[t]`; entries equal to the
    threshold are kept (ties kept). Returns `x`.

    Args:
        x: per-task values, shape `(T, ...)`, finite; modified in place.
        thresholds: one threshold per task (None keeps that task whole).
    """
    if len(thresholds) != x.shape[0]:
        raise ValueError(f"got {len(thresholds)} thresholds for {x.shape[0]} tasks")
    if all(t is None for t in thresholds):
        return x
    if any(t is None for t in thresholds):
        for row, threshold in zip(x, thresholds):
            if threshold is not None:
                trim_tasks_(row[None], [threshold])
        return x
    limits = torch.stack([torch.as_tensor(t) for t in thresholds])
    limits = limits.to(torch.promote_types(limits.dtype, x.dtype)).reshape(-1, *([1] * (x.dim() - 1)))
    magnitude = x.abs()
    if limits.dtype != x.dtype:
        # A threshold from a wider dtype (mixed-precision models) is compared exactly.
        magnitude = magnitude.to(limits.dtype)
    # Multiplying by the keep mask is about twice as fast as masked_fill_ (inputs are finite).
    return x.mul_(magnitude >= limits)


def tensor_threshold(x: Tensor, mask_rate: float) -> Tensor | None:
    """The k-th smallest `|x|` of one tensor, `k = floor(numel * mask_rate)` (None when k = 0).

    Args:
        x: values of one task (any shape).
        mask_rate: fraction of entries dropped by magnitude, in [0, 1].
    """
    k = kth_index(x.numel(), mask_rate)
    if k == 0:
        return None
    return x.detach().reshape(-1).abs().kthvalue(k).values


def elect_signs(x: Tensor, group_dim: int | None = None) -> Tensor:
    """Elected sign per coordinate: the sign of the summed mass over tasks, with the tie fallback.

    Where `sum_t x_t[j] == 0` the sign is the sign of the sum of elected signs over the
    coordinate's group; where that is 0 too the sign stays 0 (the disjoint mean then keeps only
    negative entries, as the reference's `torch.where` does).

    Args:
        x: per-task values, shape `(T, ...)`.
        group_dim: dimension of `x` (>= 1) spanning a tie-fallback group (e.g. the components of one
            neuron); None makes all coordinates one group (a whole tensor).
    """
    sign = torch.sign(x.sum(dim=0))
    if group_dim is None:
        fallback = torch.sign(sign.sum())
    else:
        if group_dim < 1:
            raise ValueError(f"group_dim must index a non-task dimension (>= 1), got {group_dim}")
        fallback = torch.sign(sign.sum(dim=group_dim - 1, keepdim=True))
    return torch.where(sign == 0, fallback, sign)


def disjoint_mean(x: Tensor, sign: Tensor) -> Tensor:
    """Mean over tasks of the entries whose sign equals the elected sign (zeros never count).

    Args:
        x: per-task values, shape `(T, ...)`.
        sign: elected signs, shape `x.shape[1:]` (from `elect_signs`).
    """
    agree = torch.where(sign > 0, x > 0, x < 0)
    total = torch.where(agree, x, torch.zeros((), dtype=x.dtype)).sum(dim=0)
    count = agree.sum(dim=0).clamp_(min=1)
    return total / count


def ties_merge(x: Tensor, group_dim: int | None = None) -> Tensor:
    """Sign election followed by the disjoint mean ("TIES merge" without trimming).

    Args:
        x: per-task values, shape `(T, ...)`.
        group_dim: tie-fallback group dimension, see `elect_signs`.
    """
    return disjoint_mean(x, elect_signs(x, group_dim))
