"""Sign conflicts between the trimmed task vectors, and the mass a sign election discards.

Where two tasks both keep an entry after the magnitude trim, they either push it the same way or
they conflict; TIES and NeuroMerging resolve a conflict by electing one sign and dropping the
entries of the other, so a task that conflicts often, or whose entries lose elections, is the task
the merge sacrifices. Counts are exact integers (accumulated in int64), so they add up across
tensors and layers; rates are taken at the end.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from neuroflow.merging.steps import elect_signs

# Entries per task per matmul block: counts stay exact in float32 (below 2^24).
_CHUNK = 1 << 20


@dataclass
class SignCounts:
    """Sign agreement of T trimmed task vectors over some entries.

    Attributes:
        overlap: entries where at least two tasks are non-zero.
        conflicts: of those, entries holding both a positive and a negative task value.
        task_overlap: per task, entries where it and at least one other task are non-zero.
        task_conflicts: of those, entries where another non-zero task has the opposite sign.
        pair_both: `(T, T)`, entries where both tasks of the pair are non-zero.
        pair_opposite: `(T, T)`, of those, entries where their signs differ.
    """

    overlap: int
    conflicts: int
    task_overlap: Tensor
    task_conflicts: Tensor
    pair_both: Tensor
    pair_opposite: Tensor


def sign_counts(x: Tensor) -> SignCounts:
    """Count overlapping and conflicting entries of trimmed task values.

    Args:
        x: per-task values after the trim, shape `(T, ...)` (zeros are entries a task dropped).
    """
    num_tasks = x.shape[0]
    flat = x.detach().reshape(num_tasks, -1)
    overlap = conflicts = 0
    task_overlap = torch.zeros(num_tasks, dtype=torch.int64)
    task_conflicts = torch.zeros(num_tasks, dtype=torch.int64)
    pair_both = torch.zeros(num_tasks, num_tasks, dtype=torch.int64)
    pair_opposite = torch.zeros(num_tasks, num_tasks, dtype=torch.int64)
    for start in range(0, flat.shape[1], _CHUNK):
        block = flat[:, start : start + _CHUNK]
        # 0/1 floats and matrix products throughout: several times faster than bool reductions,
        # and exact (every partial sum is an integer below 2^24).
        p, n = (block > 0).float(), (block < 0).float()
        nz = p + n
        n_pos, n_neg = p.sum(dim=0), n.sum(dim=0)  # (m,) tasks pushing up / down
        any_pos, any_neg = (n_pos > 0).float(), (n_neg > 0).float()
        shared = (n_pos + n_neg >= 2).float()
        overlap += int(shared.sum())
        conflicts += int((any_pos * any_neg).sum())
        # A task is never both signs, so "another task has the opposite sign" needs no removal of
        # its own vote: a positive task conflicts wherever anything is negative, and vice versa.
        task_overlap += (nz @ shared).round().long()
        task_conflicts += (p @ any_neg + n @ any_pos).round().long()
        pair_both += (nz @ nz.T).round().long()
        opposite = p @ n.T
        pair_opposite += (opposite + opposite.T).round().long()
    return SignCounts(overlap, conflicts, task_overlap, task_conflicts, pair_both, pair_opposite)


def election_loss(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per task, the L1 mass of its trimmed entries that lose TIES's sign election, and its whole
    trimmed L1 mass (both float64).

    The election is `neuroflow.merging.steps.elect_signs` over the tensor (the tie-fallback group
    of TIES and of NeuroMerging's point parameters); NeuroMerging elects the signs of neuron
    weights in each neuron's SVD coordinates instead, so for those this is the entry-wise proxy.

    Args:
        x: per-task values after the trim, shape `(T, ...)`.
    """
    flat = x.detach().reshape(x.shape[0], -1)
    # Over the whole tensor (the tie fallback is a tensor-wide vote). Where the election is a tie
    # (sign 0) the disjoint mean keeps only negative entries, i.e. it acts as if "-" had won.
    sign = elect_signs(flat)
    sign = torch.where(sign == 0, -1.0, sign).to(flat.dtype)
    lost = torch.zeros(flat.shape[0], dtype=torch.float64)
    kept = torch.zeros(flat.shape[0], dtype=torch.float64)
    for start in range(0, flat.shape[1], _CHUNK):
        block = flat[:, start : start + _CHUNK]
        # Block sums in the block's dtype (a float64 reduction is several times slower),
        # accumulated in float64 across blocks, as `select.py` sums sigma_t.
        kept += block.abs().sum(dim=1)
        # x * e < 0 exactly where a non-zero entry opposes the elected sign e; its size is |x|.
        lost += (block * sign[start : start + _CHUNK]).neg_().clamp_(min=0).sum(dim=1)
    return lost, kept
