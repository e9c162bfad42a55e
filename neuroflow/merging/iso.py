"""Iso-C and Iso-CTS (Marczak et al., "No Task Left Behind: Isotropic Model Merging with Common and
Task-Specific Subspaces", ICML 2025).

Task arithmetic's summed update `M = sum_t tau_t` of a weight matrix has a spectrum dominated by a
few directions, so tasks whose directions carry small singular values are drowned out. **Iso-C**
keeps the singular vectors of `M = U S V^T` and flattens the spectrum:
`alpha * mean(S) * U V^T` (the nuclear norm `sum(S)` is kept). **Iso-CTS** keeps only the top
directions of `M` (the common subspace), gives the remaining rank to each task's own top directions
orthogonal to that subspace (`tau_t - U_c U_c^T tau_t`), whitens the concatenated left and right
bases (polar factor, as TSV-M does) and applies the same isotropic spectrum, the mean of all the
kept singular values.

Round-off-level singular values are left out, of the spectrum and of the directions: in exact
arithmetic their singular vectors are an arbitrary completion of the basis (a rank-deficient `M`,
a task inside the common subspace) and the paper's formula would give them the full isotropic
weight, with an arbitrary sign. Full-rank inputs, the generic case, match the paper exactly. A
float32 low-rank update (LoRA) is only numerically full-rank: its noise directions do get weight,
as in the paper. SVDs run in float64.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from neuroflow.merging.base import MergeMethod
from neuroflow.merging.routing import Route
from neuroflow.merging.tsv import polar_factor, significant
from neuroflow.merging.validation import check_finite, check_range


def iso_c(matrix: Tensor, alpha: float = 1.0) -> Tensor:
    """Iso-C of one summed task matrix `M = U S V^T`: `alpha * mean(S) * U V^T`.

    Args:
        matrix: the task-arithmetic sum `M`, shape `(m, n)`.
        alpha: the scaling coefficient.

    Returns:
        the merged update, in the dtype of `matrix`.
    """
    u, s, vh = torch.linalg.svd(matrix.to(torch.float64), full_matrices=False)
    keep = significant(s, tuple(matrix.shape))
    if not bool(keep.any()):
        return torch.zeros_like(matrix)
    return (alpha * s[keep].mean() * (u[:, keep] @ vh[keep])).to(matrix.dtype)


def iso_cts_split(rank: int, num_tasks: int, common_space_fraction: float) -> tuple[int, int]:
    """`(common, per_task)`: directions of the common subspace and of each task-specific subspace.

    As in the authors' code: the task-specific share `rank - int(rank * fraction)` is rounded to a
    multiple of T (Python's `round`), the common subspace takes the rest; capped so that
    `common >= 0`.

    Args:
        rank: `min(m, n)` of the layer.
        num_tasks: T.
        common_space_fraction: share of the rank given to the common subspace, in [0, 1].
    """
    per_task = min(rank // num_tasks, round((rank - int(rank * common_space_fraction)) / num_tasks))
    return rank - num_tasks * per_task, per_task


def iso_cts(task_matrices: Tensor, common_space_fraction: float = 0.8, alpha: float = 1.0) -> Tensor:
    """Iso-CTS of one layer: common top directions of `M = sum_t tau_t` plus each task's top
    directions orthogonal to them, whitened, with an isotropic spectrum.

    Args:
        task_matrices: the task matrices, shape `(T, m, n)` (`(out, in)`: the common subspace is
            projected out on the output side, as in the paper).
        common_space_fraction: share of the rank kept from `M`.
        alpha: the scaling coefficient.

    Returns:
        the merged `(m, n)` update, in the dtype of `task_matrices`.
    """
    mats = task_matrices.to(torch.float64)
    shape = tuple(mats.shape[1:])
    num_tasks, rank = mats.shape[0], min(shape)
    common, per_task = iso_cts_split(rank, num_tasks, common_space_fraction)
    u, s, vh = torch.linalg.svd(mats.sum(dim=0), full_matrices=False)
    # One round-off scale for the whole layer: a task lying inside the common subspace leaves a
    # residual of pure round-off, whose own largest singular value says nothing.
    scale = torch.maximum(s.max(), torch.linalg.matrix_norm(mats).max()) if rank else 0.0
    keep = significant(s[:common], shape, scale)
    u_common = u[:, :common]
    us, ss, vs = [u_common[:, keep]], [s[:common][keep]], [vh[:common][keep].T]
    if per_task > 0:
        for tau in mats:
            residual = tau - u_common @ (u_common.T @ tau)
            ut, st, vht = torch.linalg.svd(residual, full_matrices=False)
            keep = significant(st[:per_task], shape, scale)
            us.append(ut[:, :per_task][:, keep])
            ss.append(st[:per_task][keep])
            vs.append(vht[:per_task][keep].T)
    sigma = torch.cat(ss)
    if sigma.numel() == 0:
        return torch.zeros(shape, dtype=task_matrices.dtype)
    u_perp = polar_factor(torch.cat(us, dim=1))
    v_perp = polar_factor(torch.cat(vs, dim=1))
    return (alpha * sigma.mean() * (u_perp @ v_perp.T)).to(task_matrices.dtype)


class IsoC(MergeMethod):
    """Iso-C: task arithmetic with a flat (isotropic) spectrum per weight matrix.

    Weight matrices are the merged tensors routed as neurons with two dimensions (viewed
    `(out, in)` through the route); every other merged tensor gets the mean of its task vectors,
    as the authors' code does; `alpha` scales the whole update.

    Args:
        alpha: coefficient of the merged update. The paper selects it on validation data; 1.0
            (`mean(S)` of the summed task matrix, FusionBench's default) is a starting point, not a
            tuned value: search it (e.g. 0.5 to 2.0) where validation data exists.
    """

    name = "iso_c"
    linear_hparams = ("alpha",)

    def __init__(self, alpha: float = 1.0) -> None:
        self.alpha = check_finite(self, "alpha", alpha)

    def merge_tensor(self, name: str, base: Tensor, task_vectors: Tensor, route: Route, stats: dict[str, Any]) -> Tensor:
        if route.kind != "neuron" or base.dim() != 2 or base.numel() == 0:
            return self.alpha * task_vectors.mean(dim=0)
        summed = route.to_neurons(task_vectors, leading=1).sum(dim=0)
        return route.from_neurons(iso_c(summed, self.alpha), base.shape)


class IsoCTS(MergeMethod):
    """Iso-CTS: Iso-C over the common subspace enriched with task-specific subspaces.

    Args:
        common_space_fraction: share of each matrix's rank taken from the summed task matrix's top
            directions; the rest is split evenly among the tasks (0.8, the authors' published
            setting).
        alpha: coefficient of the merged update, selected on validation data in the paper; 1.0 is
            a starting point (see `IsoC`).
    """

    name = "iso_cts"
    linear_hparams = ("alpha",)

    def __init__(self, common_space_fraction: float = 0.8, alpha: float = 1.0) -> None:
        self.common_space_fraction = check_range(self, "common_space_fraction", common_space_fraction, 0.0, 1.0)
        self.alpha = check_finite(self, "alpha", alpha)

    def merge_tensor(self, name: str, base: Tensor, task_vectors: Tensor, route: Route, stats: dict[str, Any]) -> Tensor:
        if route.kind != "neuron" or base.dim() != 2 or base.numel() == 0:
            return self.alpha * task_vectors.mean(dim=0)
        mats = route.to_neurons(task_vectors, leading=1)
        return route.from_neurons(iso_cts(mats, self.common_space_fraction, self.alpha), base.shape)
