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

from neuroflow.merging.base import MergeMethod
from neuroflow.merging.routing import Route
from neuroflow.merging.steps import ties_merge, trim_tasks_
from neuroflow.merging.task_vectors import TaskVectors

# Neurons per Gram/eigh batch: bounds the float64 temporaries to ~ T x 4096 x fan_in.
_ROW_CHUNK = 4096
# Gram eigenvalues below this fraction of the largest (times T) are round-off: float64 resolves
# eigenvalues down to ~eps * lambda_max, i.e. singular values down to ~1e-8 of the largest.
_EIG_RTOL = 16 * torch.finfo(torch.float64).eps


def project_neurons(w0: Tensor, task_rows: Tensor) -> tuple[Tensor, Tensor]:
    """Projection coefficients `s_t = <tau_t, w0> / <w0, w0>` and orthogonal parts `tau_t - s_t w0`.

    Where `<w0, w0> == 0`, `s_t = 0` and the whole row is orthogonal (the reference divides by zero).

    Args:
        w0: pre-trained rows, shape `(R, n)`.
        task_rows: trimmed task rows, shape `(T, R, n)`.

    Returns:
        `s` of shape `(T, R)` and the orthogonal rows of shape `(T, R, n)`.
    """
    norm_sq = (w0 * w0).sum(dim=-1)
    dots = torch.einsum("trn,rn->tr", task_rows, w0)
    safe = torch.where(norm_sq > 0, norm_sq, torch.ones((), dtype=norm_sq.dtype))
    s = torch.where(norm_sq > 0, dots / safe, torch.zeros((), dtype=dots.dtype))
    return s, task_rows - s[..., None] * w0


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


def merge_orthogonal(orth: Tensor) -> Tensor:
    """`psi_orth` per neuron: disjoint mean in each neuron's own SVD coordinates, batched.

    Args:
        orth: orthogonal rows, shape `(T, R, n)`.

    Returns:
        shape `(R, n)`, in the dtype of `orth`.
    """
    num_tasks, rows, _ = orth.shape
    out = torch.empty(orth.shape[1:], dtype=orth.dtype)
    for start in range(0, rows, _ROW_CHUNK):
        a = orth[:, start : start + _ROW_CHUNK]
        a64 = a.to(torch.float64)
        gram = torch.einsum("trn,srn->rts", a64, a64)
        eigvals, u = torch.linalg.eigh(gram)  # (r, T), (r, T, T); column j of u is component j
        keep = eigvals > _EIG_RTOL * num_tasks * eigvals.amax(dim=-1, keepdim=True).clamp(min=0)
        # A zero task row has exactly-zero coordinates in C, so it must not count in the disjoint
        # mean; eigh leaves round-off there instead of exact zeros.
        live_task = (a != 0).any(dim=-1).T  # (r, T)
        coords = (u * keep[:, None, :] * live_task[:, :, None]).permute(1, 0, 2)  # (T, r, comps) ~ C
        m = ties_merge(coords, group_dim=2)  # (r, comps); the tie group is one neuron's components
        weights = torch.einsum("rtj,rj->tr", u, m)  # psi = A^T (U m)
        out[start : start + _ROW_CHUNK] = torch.einsum("trn,tr->rn", a, weights.to(a.dtype))
    return out


def neuron_merge(w0: Tensor, task_rows: Tensor) -> tuple[Tensor, Tensor]:
    """`(psi_par, psi_orth)` of one neuron weight from its already-trimmed task rows.

    Args:
        w0: pre-trained rows, shape `(R, n)`.
        task_rows: trimmed task rows, shape `(T, R, n)`.
    """
    s, orth = project_neurons(w0, task_rows)
    return merge_parallel(w0, s), merge_orthogonal(orth)


class NeuroMerging(MergeMethod):
    """NeuroMerging: neuron-level subspace merging (Lite: `lambda_1=0, lambda_2="auto"`; Full otherwise).

    Args:
        mask_rate: fraction of each task vector's entries dropped by magnitude, over the whole model
            (0.8 keeps the top 20%; 0 keeps everything).
        lambda_1: coefficient of the merged parallel part `psi_par` (0 in NeuroMerging Lite).
        lambda_2: coefficient of the merged orthogonal part and of point parameters; "auto" uses
            `1 / (1 - max_t sigma_t)`, `sigma_t` being the fraction of task t's L1 mass removed by the trim.
    """

    name = "neuromerging"

    def __init__(self, mask_rate: float = 0.8, lambda_1: float = 0.0, lambda_2: float | Literal["auto"] = "auto") -> None:
        if not 0.0 <= mask_rate <= 1.0:
            raise ValueError(f"NeuroMerging: mask_rate must be in [0, 1], got {mask_rate}")
        if lambda_2 != "auto" and isinstance(lambda_2, str):
            raise ValueError(f"NeuroMerging: lambda_2 must be a number or 'auto', got {lambda_2!r}")
        self.mask_rate = float(mask_rate)
        self.lambda_1 = float(lambda_1)
        self.lambda_2 = lambda_2 if lambda_2 == "auto" else float(lambda_2)

    @property
    def mode(self) -> str:
        """"lite" (no validation: `lambda_1=0`, automatic `lambda_2`) or "full"."""
        return "lite" if self.lambda_1 == 0.0 and self.lambda_2 == "auto" else "full"

    def prepare(self, task_vectors: TaskVectors) -> dict[str, Any]:
        trim = task_vectors.trim_statistics(self.mask_rate)
        sigma = max(trim.sigma, default=0.0)
        lambda_2 = 1.0 / (1.0 - sigma) if self.lambda_2 == "auto" else self.lambda_2
        return {"trim": trim, "lambda_1": self.lambda_1, "lambda_2": lambda_2, "mode": self.mode}

    def merge_tensor(self, name: str, base: Tensor, task_vectors: Tensor, route: Route, stats: dict[str, Any]) -> Tensor:
        trimmed = trim_tasks_(task_vectors, stats["trim"].thresholds)
        if route.kind != "neuron":
            return stats["lambda_2"] * ties_merge(trimmed)
        w0 = route.to_neurons(base)
        s, orth = project_neurons(w0, route.to_neurons(trimmed, leading=1))
        del trimmed
        delta = stats["lambda_2"] * merge_orthogonal(orth)
        if self.lambda_1 != 0.0:
            delta += self.lambda_1 * merge_parallel(w0, s)
        return route.from_neurons(delta, base.shape)
