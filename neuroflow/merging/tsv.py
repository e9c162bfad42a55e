"""TSV-M (Gargiulo et al., "Task Singular Vectors: Reducing Task Interference in Model Merging", CVPR 2025).

Per weight matrix: the SVD of each task matrix `tau_t = U_t S_t V_t^T`, truncated to its top `k`
singular triplets (`k = floor(rank / T)` by default, the paper's choice, so the T low-rank parts fit
in the layer's rank together); the left and the right singular vectors of all tasks are concatenated
(`U = [U_1 .. U_T]`, `V = [V_1 .. V_T]`) and whitened, i.e. replaced by the nearest matrices with
orthonormal columns (the polar factor `P Q^T` of `U = P Sigma Q^T`), which removes the interference
between the tasks' subspaces; the merged update is `alpha * U_perp blockdiag(S_1 .. S_T) V_perp^T`.

Round-off-level singular triplets are dropped before whitening, and the polar factor is taken over
the numerical rank of its input. In exact arithmetic those directions are arbitrary (any orthonormal
completion of the singular basis of a rank-deficient task matrix, e.g. a zero task, or of duplicated
tasks) and would leak into the whitened basis of the other tasks; generic full-rank inputs are
unaffected. SVDs run in float64 (float32 inputs included), like NeuroMerging's Gram matrices.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from neuroflow.merging.base import MergeMethod
from neuroflow.merging.routing import Route
from neuroflow.merging.validation import check_finite, check_range

_EPS = torch.finfo(torch.float64).eps


def significant(s: Tensor, shape: tuple[int, ...], scale: Tensor | float | None = None) -> Tensor:
    """Mask of the singular values above round-off level: `s > max(shape) * eps * scale`.

    Args:
        s: singular values (descending), float64.
        shape: the shape of the decomposed matrix.
        scale: the magnitude round-off is relative to; default the largest of `s` (so a zero
            matrix keeps nothing).
    """
    if s.numel() == 0:
        return torch.zeros(0, dtype=torch.bool)
    reference = s.max() if scale is None else torch.as_tensor(scale, dtype=s.dtype)
    return s > max(shape) * _EPS * reference


def polar_factor(x: Tensor) -> Tensor:
    """The orthogonal polar factor `P Q^T` of `x = P Sigma Q^T`: the matrix with orthonormal columns
    (or rows, when `x` is wide) nearest to `x` in Frobenius norm, over the numerical rank of `x`.

    Args:
        x: a float64 matrix.
    """
    p, s, qh = torch.linalg.svd(x, full_matrices=False)
    keep = significant(s, tuple(x.shape))
    return p[:, keep] @ qh[keep]


def tsv_rank(rank: int, num_tasks: int, fraction: float | None = None) -> int:
    """Singular triplets kept per task: `floor(rank * fraction)` (default fraction `1 / T`), at least 1.

    The reference code's `int(rank * (1 / T))` is 0 when a matrix has fewer singular values than
    there are tasks (e.g. BERT's 2-row token-type embedding with 4+ tasks) and would drop that
    tensor's update entirely; keeping one triplet per task merges it instead.

    Args:
        rank: `min(m, n)` of the matrix.
        num_tasks: T.
        fraction: share of the rank kept per task, in (0, 1].
    """
    share = 1.0 / num_tasks if fraction is None else fraction
    return min(rank, max(1, int(rank * share)))


def tsv_merge_matrix(task_matrices: Tensor, k: int) -> Tensor:
    """TSV-M of one layer, before the `alpha` scaling: `U_perp blockdiag(S_t) V_perp^T`.

    Args:
        task_matrices: the task matrices, shape `(T, m, n)`.
        k: singular triplets kept per task (`tsv_rank`).

    Returns:
        the merged `(m, n)` matrix, in the dtype of `task_matrices`.
    """
    mats = task_matrices.to(torch.float64)
    us, ss, vs = [], [], []
    for tau in mats:
        u, s, vh = torch.linalg.svd(tau, full_matrices=False)
        keep = significant(s[:k], tuple(tau.shape))
        us.append(u[:, :k][:, keep])
        ss.append(s[:k][keep])
        vs.append(vh[:k][keep].T)
    sigma = torch.cat(ss)
    if sigma.numel() == 0:
        return torch.zeros(mats.shape[1:], dtype=task_matrices.dtype)
    u_perp = polar_factor(torch.cat(us, dim=1))
    v_perp = polar_factor(torch.cat(vs, dim=1))
    return ((u_perp * sigma) @ v_perp.T).to(task_matrices.dtype)


class TSVMerge(MergeMethod):
    """TSV-M: per weight matrix, concatenate each task's top singular vectors, whiten them
    (orthogonalise the concatenated U and V) and reassemble with the tasks' singular values.

    Weight matrices are the tensors routed as neurons with two dimensions (viewed `(out, in)`
    through the route, so GPT-2's `Conv1D` is handled like `nn.Linear`). Every other merged tensor
    (biases, norms, convolution kernels, 2-D tensors routed as points) gets the mean of its task
    vectors, as in the authors' code, which averages every non-matrix parameter; `alpha` then
    scales the whole update (the paper applies it to the merged task vector, including averaged
    parameters).

    Args:
        fraction: share of each task matrix's rank `min(m, n)` kept per task; None uses `1 / T`
            (the paper's choice: the T parts together fill the layer's rank).
        alpha: coefficient of the merged update (the paper uses 1.0, no validation needed).
    """

    name = "tsv_m"
    linear_hparams = ("alpha",)

    def __init__(self, fraction: float | None = None, alpha: float = 1.0) -> None:
        self.fraction = None if fraction is None else check_range(self, "fraction", fraction, 0.0, 1.0, low_inclusive=False)
        self.alpha = check_finite(self, "alpha", alpha)

    def merge_tensor(self, name: str, base: Tensor, task_vectors: Tensor, route: Route, stats: dict[str, Any]) -> Tensor:
        if route.kind != "neuron" or base.dim() != 2 or base.numel() == 0:
            return self.alpha * task_vectors.mean(dim=0)
        mats = route.to_neurons(task_vectors, leading=1)
        k = tsv_rank(min(mats.shape[1:]), mats.shape[0], self.fraction)
        return self.alpha * route.from_neurons(tsv_merge_matrix(mats, k), base.shape)
