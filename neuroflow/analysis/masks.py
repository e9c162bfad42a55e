"""Overlap of the tasks' trimmed masks: which entries each task keeps after the magnitude trim.

The trim (`TaskVectors.trim_statistics`, the exact global threshold TIES and NeuroMerging use)
keeps each task's largest entries; two tasks whose masks barely overlap can be merged almost
without interference, two whose masks coincide compete for the same weights. The Jaccard index of
two masks is `|A & B| / |A | B|`.
"""

from __future__ import annotations

import torch
from torch import Tensor

_CHUNK = 1 << 20  # entries per matmul block: float32 counts stay exact (below 2^24)


def mask_counts(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per task the number of kept (non-zero) entries, and per pair the size of the intersection.

    Args:
        x: per-task values after the trim, shape `(T, ...)`.

    Returns:
        `support` of shape `(T,)` and `intersection` of shape `(T, T)` (int64; the diagonal is the
        support).
    """
    flat = x.detach().reshape(x.shape[0], -1)
    support = torch.zeros(flat.shape[0], dtype=torch.int64)
    intersection = torch.zeros(flat.shape[0], flat.shape[0], dtype=torch.int64)
    for start in range(0, flat.shape[1], _CHUNK):
        kept = (flat[:, start : start + _CHUNK] != 0).float()
        support += kept.sum(dim=1).round().long()
        intersection += (kept @ kept.T).round().long()
    return support, intersection


def jaccard(support: Tensor, intersection: Tensor) -> Tensor:
    """Pairwise Jaccard index of the masks, float64; NaN where both masks are empty.

    Args:
        support: `(T,)` kept entries per task.
        intersection: `(T, T)` entries kept by both tasks.
    """
    union = (support[:, None] + support[None, :] - intersection).to(torch.float64)
    return torch.where(union > 0, intersection.to(torch.float64) / torch.where(union > 0, union, 1.0), torch.nan)
