"""NeuroMerging (Fang et al., EMNLP 2025): merge each neuron's parallel and orthogonal subspaces.

See `/docs/merging.md` and the project spec. Per task: global magnitude trim. Per neuron (a row of a
weight, after routing): split each trimmed task row into its projection on the pre-trained row
(`s_t * w0`) and the orthogonal rest; merge the coefficients `s_t` with the disjoint mean, and merge
the orthogonal rows in the coordinates of their own SVD basis. Point parameters get the element-wise
disjoint mean. `theta = theta_0 + lambda_1 * psi_par + lambda_2 * psi_orth`.

The orthogonal merge is batched over neurons. For the T x n matrix `A` of one neuron's orthogonal
rows, `A = U S V^T` and the coordinates are `C = A V = U S`. Because `S_j > 0` does not change a sign,
the disjoint mean of column j of C is `S_j * m_j` with `m_j` the disjoint mean of column j of U, and
`psi_orth = sum_j S_j m_j V_j = A^T (U m)`: only U is needed, and U is the eigenbasis of the T x T
Gram matrix `A A^T`. Components whose Gram eigenvalue is at round-off level are exactly-zero columns
of C in exact arithmetic (rank deficiency: T > n, duplicate experts, zero rows), so they are zeroed
before the sign election instead of feeding noise into it.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from neuroflow.merging import kernels
from neuroflow.merging.base import MergeMethod
from neuroflow.merging.routing import Route
from neuroflow.merging.steps import TieFallback, ties_merge, trim_tasks_
from neuroflow.merging.task_vectors import TaskVectors
from neuroflow.merging.validation import MergeInputError, check_finite, check_range

# Scalars (T x rows x fan_in) per block of neurons processed together.
_CHUNK_ELEMENTS = 1 << 18
# Gram eigenvalues below this fraction of the largest (times T) are round-off: float64 resolves
# eigenvalues down to ~eps * lambda_max, i.e. singular values down to ~1e-8 of the largest.
_EIG_RTOL = 16 * torch.finfo(torch.float64).eps


def merge_parallel(w0: Tensor, s: Tensor) -> Tensor:
    """`psi_par`: disjoint mean of the coefficients (one tie-fallback group per tensor) times `w0 / ||w0||`.

    Args:
        w0: pre-trained rows, shape `(R, n)`.
        s: projection coefficients, shape `(T, R)`.
    """
    merged = ties_merge(s)
    norm = w0.norm(dim=-1, keepdim=True)
    unit = torch.where(norm > 0, w0 / torch.where(norm > 0, norm, 1.0), torch.zeros((), dtype=w0.dtype))
    return merged[:, None] * unit


def merge_orthogonal(w0: Tensor, task_rows: Tensor) -> tuple[Tensor, Tensor]:
    """Projection coefficients and `psi_orth` per neuron, batched, without materialising the
    orthogonal rows.

    With `A_t = x_t - s_t w0` and `s_t = <x_t, w0> / q`, `q = <w0, w0>`: the Gram matrix is
    `A A^T = X X^T - q s s^T` and `psi_orth = A^T w = X^T w - (s . w) w0`.

    Args:
        w0: pre-trained rows, shape `(R, n)`.
        task_rows: trimmed task rows, shape `(T, R, n)`.

    Returns:
        `s` of shape `(T, R)` and `psi_orth` of shape `(R, n)`, in the dtype of `task_rows`.
    """
    num_tasks, rows, width = task_rows.shape
    # One float64 copy of the rows with w0 appended per neuron: a single batched product gives the
    # Gram matrix, <x_t, w0> and <w0, w0> (exact enough that the eigenvectors, hence the sign
    # elections, are those of the given rows), and a second one psi; element-wise products and
    # sums over the T x R x n rows, each a pass of its own, cost several times more.
    z = torch.empty((rows, num_tasks + 1, width), dtype=torch.float64)
    z[:, :num_tasks].copy_(task_rows.transpose(0, 1))
    z[:, num_tasks].copy_(w0)
    products = torch.bmm(z, z.transpose(1, 2))  # (R, T + 1, T + 1)
    gram = products[:, :num_tasks, :num_tasks].clone()
    dots = products[:, :num_tasks, num_tasks].T  # (T, R)
    norm_sq = products[:, num_tasks, num_tasks]
    s64 = torch.where(norm_sq > 0, dots / torch.where(norm_sq > 0, norm_sq, 1.0), 0.0)
    # A zero task row has exactly-zero coordinates in C and must not count in the disjoint mean
    # (eigh leaves round-off there). Its squared norm is exactly 0 (squares of float32 values
    # cannot underflow in float64; float64 rows below ~1e-154 count as zero).
    live_task = torch.diagonal(gram, dim1=-2, dim2=-1) > 0  # (R, T)
    gram -= norm_sq[:, None, None] * s64.T[:, :, None] * s64.T[:, None, :]
    eigvals, u = torch.linalg.eigh(gram)  # (R, T), (R, T, T); column j of u is component j
    keep = eigvals > _EIG_RTOL * num_tasks * eigvals.amax(dim=-1, keepdim=True).clamp(min=0)
    coords = (u * keep[:, None, :] * live_task[:, :, None]).permute(1, 0, 2)  # (T, R, comps) ~ C
    m = ties_merge(coords, group_dim=2)  # (R, comps); the tie group is one neuron's components
    weights = torch.einsum("rtj,rj->tr", u, m)  # psi = A^T (U m)
    # psi = sum_t weights_t x_t - (s . weights) w0, as one product with the appended rows.
    coefficients = torch.empty((rows, 1, num_tasks + 1), dtype=torch.float64)
    coefficients[:, 0, :num_tasks] = weights.T
    coefficients[:, 0, num_tasks] = -(s64 * weights).sum(dim=0)
    psi = torch.bmm(coefficients, z).squeeze(1).to(task_rows.dtype)
    return s64.to(task_rows.dtype), psi


def neuron_merge(w0: Tensor, task_rows: Tensor) -> tuple[Tensor, Tensor]:
    """`(psi_par, psi_orth)` of one neuron weight from its already-trimmed task rows.

    Args:
        w0: pre-trained rows, shape `(R, n)`.
        task_rows: trimmed task rows, shape `(T, R, n)`.
    """
    s, psi_orth = merge_orthogonal(w0, task_rows)
    return merge_parallel(w0, s), psi_orth


class NeuroMerging(MergeMethod):
    """NeuroMerging: neuron-level subspace merging (Lite: `lambda_1=0, lambda_2="auto"`; Full otherwise).

    Args:
        mask_rate: fraction of each task vector's entries dropped by magnitude, over the whole model,
            in [0, 1) (0.8 keeps the top 20%; 0 keeps everything).
        lambda_1: coefficient of the merged parallel part `psi_par` (finite; 0 in NeuroMerging Lite).
        lambda_2: coefficient (finite) of the merged orthogonal part and of point parameters; "auto" uses
            `1 / (1 - max_t sigma_t)`, `sigma_t` being the fraction of task t's L1 mass removed by the trim.
    """

    name = "neuromerging"
    linear_hparams = ("lambda_1", "lambda_2")

    def __init__(self, mask_rate: float = 0.8, lambda_1: float = 0.0, lambda_2: float | Literal["auto"] = "auto") -> None:
        # mask_rate 1 would trim everything (and make the automatic lambda_2 1 / (1 - 1)).
        self.mask_rate = check_range(self, "mask_rate", mask_rate, 0.0, 1.0, high_inclusive=False)
        self.lambda_1 = check_finite(self, "lambda_1", lambda_1)
        self.lambda_2 = check_finite(self, "lambda_2", lambda_2, special=("auto",))

    @property
    def mode(self) -> str:
        """"lite" (no validation: `lambda_1=0`, automatic `lambda_2`) or "full"."""
        return "lite" if self.lambda_1 == 0.0 and self.lambda_2 == "auto" else "full"

    def basis(self) -> list[MergeMethod]:
        # The orthogonal basis is merged with the automatic lambda_2 (a number the statistics
        # pass yields), and `coefficients` rescales it; a fixed lambda_2 is then one case of it.
        return [self.with_params(lambda_1=1.0, lambda_2=0.0), self.with_params(lambda_1=0.0, lambda_2="auto")]

    def coefficients(self, basis_info: list[dict[str, Any]]) -> list[float]:
        auto = float(basis_info[1]["statistics"]["lambda_2"])
        lambda_2 = auto if self.lambda_2 == "auto" else float(self.lambda_2)
        return [self.lambda_1, lambda_2 / auto]

    def prepare(self, task_vectors: TaskVectors) -> dict[str, Any]:
        trim = task_vectors.trim_statistics(self.mask_rate)
        lambda_2 = self._auto_lambda_2(trim.sigma, task_vectors) if self.lambda_2 == "auto" else self.lambda_2
        return {"trim": trim, "lambda_1": self.lambda_1, "lambda_2": lambda_2, "mode": self.mode}

    def _auto_lambda_2(self, sigma: list[float], task_vectors: TaskVectors) -> float:
        """`1 / (1 - max_t sigma_t)`, refused when a task lost all its mass (sigma_t = 1, or NaN)."""
        for t, removed in enumerate(sigma):
            # `not <` also catches NaN; float rounding can push a nearly complete trim to >= 1.
            if not removed < 1.0:
                raise MergeInputError(
                    f"NeuroMerging: the trim at mask_rate={self.mask_rate} removes all of "
                    f"{task_vectors.experts.describe(t)}'s task-vector mass (sigma={removed}), so "
                    "lambda_2='auto' = 1 / (1 - sigma) is undefined; lower mask_rate or give lambda_2 a number"
                )
        return 1.0 / (1.0 - max(sigma, default=0.0))

    def merge_tensor(self, name: str, base: Tensor, task_vectors: Tensor, route: Route, stats: dict[str, Any]) -> Tensor:
        if base.numel() == 0:
            # No neurons (or neurons of no inputs): nothing to merge, and the neuron view of a
            # zero-size tensor cannot be formed.
            return torch.zeros_like(base)
        thresholds = stats["trim"].thresholds
        if route.kind != "neuron":
            return ties_merge(task_vectors, thresholds=thresholds).mul_(stats["lambda_2"])
        w0 = route.to_neurons(base)
        rows = route.to_neurons(task_vectors, leading=1)
        done = kernels.neuron_merge(w0, rows, thresholds, _EIG_RTOL)
        if done is not None:
            s, delta = done
        else:
            rows_per_chunk = max(1, _CHUNK_ELEMENTS // (rows.shape[0] * rows.shape[2]))
            s = torch.empty(rows.shape[:2], dtype=rows.dtype)
            delta = torch.empty_like(w0)
            # Row blocks keep every temporary small (and cache-resident) instead of a T x R x n
            # buffer per step; only the parallel part needs all rows at once (its tie group is
            # the tensor).
            for start in range(0, w0.shape[0], rows_per_chunk):
                block = slice(start, start + rows_per_chunk)
                s[:, block], delta[block] = merge_orthogonal(w0[block], trim_tasks_(rows[:, block], thresholds))
        delta *= stats["lambda_2"]
        if self.lambda_1 != 0.0:
            delta += self.lambda_1 * merge_parallel(w0, s)
        return route.from_neurons(delta, base.shape)

    def separable(self, route: Route) -> bool:
        # Neurons (rows, axis 0) are merged independently, but the parallel part's sign election
        # spans every neuron of the tensor, so only Lite-like settings (lambda_1 = 0) split them;
        # point tensors carry their tie fallback across blocks.
        if type(self).merge_tensor is not NeuroMerging.merge_tensor:
            return False
        return route.kind == "point" or (route.kind == "neuron" and route.axis == 0 and self.lambda_1 == 0.0)

    def merge_rows(self, name: str, base: Tensor, task_vectors: Tensor, route: Route, stats: dict[str, Any], tie: TieFallback) -> Tensor:
        if route.kind != "neuron" and base.numel():
            return ties_merge(task_vectors, thresholds=stats["trim"].thresholds, tie=tie).mul_(stats["lambda_2"])
        return self.merge_tensor(name, base, task_vectors, route, stats)
