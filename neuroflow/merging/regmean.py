"""RegMean (Jin et al., "Dataless Knowledge Fusion by Merging Weights of Language Models", ICLR 2023).

For a linear layer `y = W x` and experts with Gram matrices `G_i = X_i^T X_i` of the layer's inputs
on their training data, the merged weight that best reproduces every expert's outputs on its own
inputs, `argmin_W sum_i ||X_i W^T - X_i W_i^T||^2`, is `W^T = (sum_i G_i)^-1 sum_i G_i W_i^T`.
RegMean regularises it by scaling the Grams' off-diagonal entries by `alpha` (the diagonal kept),
which pulls the solution towards a per-input-feature weighted average.

neuroflow and Hugging Face store Linear weights `(out, in)`, so the formula is applied to `W^T`, in
the neuron view of the route (GPT-2's `Conv1D`, stored `(in, out)`, is transposed by its route).
The update is computed on task vectors: the formula is affine-invariant (`W_0` maps to itself), and
where `sum_i G_i` is singular (inputs no expert ever saw) the minimum-norm solution then keeps the
pre-trained weights along those directions instead of zeroing them. Tensors without Grams (biases,
norms, embeddings) are merged by `fallback`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from neuroflow.class_paths import import_path, is_class_config
from neuroflow.merging.averaging import WeightAveraging
from neuroflow.merging.base import MergeMethod
from neuroflow.merging.expert_statistics import ExpertStatistics, fan_in
from neuroflow.merging.routing import Route
from neuroflow.merging.sources import tensor_meta
from neuroflow.merging.task_vectors import TaskVectors
from neuroflow.merging.validation import check_range


def regularize_grams(grams: Tensor, alpha: float) -> Tensor:
    """`alpha * G + (1 - alpha) * diag(G)`: off-diagonal entries scaled by `alpha`, diagonal kept.

    Args:
        grams: Gram matrices, shape `(..., n, n)`.
        alpha: the off-diagonal scale, in [0, 1].
    """
    diagonal = torch.diag_embed(torch.diagonal(grams, dim1=-2, dim2=-1))
    return alpha * grams + (1.0 - alpha) * diagonal


def solve_psd(lhs: Tensor, rhs: Tensor) -> Tensor:
    """`lhs^-1 rhs` for a symmetric positive semi-definite `lhs`; the minimum-norm least-squares
    solution where `lhs` is singular.

    Args:
        lhs: `(n, n)`, float64.
        rhs: `(n, k)`, float64.
    """
    factor, info = torch.linalg.cholesky_ex(lhs)
    if int(info) == 0:
        return torch.cholesky_solve(rhs, factor)
    # Not positive definite: directions no input reached (or alpha = 1 with too few examples).
    return torch.linalg.lstsq(lhs, rhs, driver="gelsd").solution


def regmean_solve(weights: Tensor, grams: Tensor | Iterable[Tensor], alpha: float = 0.9) -> Tensor:
    """RegMean of one linear layer: `W = ((sum_i G~_i)^-1 sum_i G~_i W_i^T)^T`, `G~ = regularize_grams(G, alpha)`.

    Args:
        weights: the experts' weights (or task vectors), shape `(T, out, in)`.
        grams: the Gram matrices of their inputs, `(T, in, in)` or T `(in, in)` tensors in turn
            (read one at a time: they are accumulated, never stacked).
        alpha: off-diagonal scale of the Grams (1: the exact least-squares merge).

    Returns:
        the merged `(out, in)` weight, in the dtype of `weights`.
    """
    fan = weights.shape[-1]
    lhs = torch.zeros(fan, fan, dtype=torch.float64)
    rhs = torch.zeros(fan, weights.shape[1], dtype=torch.float64)  # sum_i G~_i W_i^T, (in, out)
    count = 0
    for w, g in zip(weights, grams, strict=False):
        g = g.to(torch.float64)
        if g.shape != (fan, fan):
            raise ValueError(f"a Gram of shape {tuple(g.shape)} for a weight with {fan} inputs")
        wt = w.to(torch.float64).T
        lhs += g
        # G~ W^T = alpha G W^T + (1 - alpha) diag(G) W^T, without forming G~
        rhs.addmm_(g, wt, alpha=alpha).addcmul_(torch.diagonal(g)[:, None], wt, value=1.0 - alpha)
        count += 1
    if count != weights.shape[0]:
        raise ValueError(f"got {count} Gram matrices for {weights.shape[0]} experts")
    # the regularisation is linear, so that of the sum is the sum of the regularised Grams
    return solve_psd(regularize_grams(lhs, alpha), rhs).T.to(weights.dtype)


def _as_method(value: MergeMethod | Mapping[str, Any] | None) -> MergeMethod | None:
    # A config (`{"class_path", "init_args"}`, as `hparams()` records it) is accepted so that
    # `with_params` and merge cards round-trip; jsonargparse hands over instances itself.
    if value is None or isinstance(value, MergeMethod):
        return value
    if is_class_config(value):
        cls = import_path(value["class_path"], "neuroflow.merging")
        if isinstance(cls, type) and issubclass(cls, MergeMethod):
            return cls(**dict(value.get("init_args") or {}))
    raise ValueError(f"RegMean: fallback must be a MergeMethod, its class_path config, or None, got {value!r}")


class RegMean(MergeMethod):
    """RegMean: each linear layer merged by the regression formula over the experts' input Grams.

    Applies to every merged tensor routed as neurons for which the experts have "regmean"
    statistics (the Gram of its inputs, shape `(fan_in, fan_in)`, keyed by the weight's name); the
    Grams are used as given (a statistics producer that averages over examples instead of summing
    weights every expert equally instead of by example count). The experts' statistics come from
    their `ExpertSource` (`statistics(i, "regmean")`, computed with `python -m neuroflow stats`).

    Args:
        alpha: scale of the Grams' off-diagonal entries, in [0, 1] (0.9 as specified for neuroflow;
            the paper tunes it on validation data, FusionBench's CLIP setting uses 0.6). 1 is the
            exact least-squares merge, 0 a per-input-feature weighted average.
        fallback: the method merging every other tensor; None averages their task vectors
            (simple averaging, as the paper does for non-linear parameters). Its `prepare` sees
            every merged tensor, the Gram-merged ones included.
    """

    name = "regmean"
    uses_data = True
    statistics_kind = "regmean"

    def __init__(self, alpha: float = 0.9, fallback: MergeMethod | None = None) -> None:
        self.alpha = check_range(self, "alpha", alpha, 0.0, 1.0)
        self.fallback = _as_method(fallback)

    @property
    def _fallback(self) -> MergeMethod:
        return self.fallback if self.fallback is not None else WeightAveraging()

    def hparams(self) -> dict[str, Any]:
        # Merge cards and reports are JSON: a nested method is recorded as its config.
        params = super().hparams()
        if self.fallback is not None:
            cls = type(self.fallback)
            params["fallback"] = {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": self.fallback.hparams()}
        return params

    def prepare(self, task_vectors: TaskVectors) -> dict[str, Any]:
        grams = ExpertStatistics(task_vectors, self.statistics_kind, type(self).__name__)
        count = 0
        for name in task_vectors.names:
            route = task_vectors.routing[name]
            if route.kind == "neuron" and grams.has(name):
                n = fan_in(tensor_meta(task_vectors.base, name)[0], route.axis)
                grams.require(name, (n, n))
                count += 1
        return {"grams": grams, "regmean_tensors": count, "fallback": self._fallback.prepare(task_vectors)}

    def merge_tensor(self, name: str, base: Tensor, task_vectors: Tensor, route: Route, stats: dict[str, Any]) -> Tensor:
        grams: ExpertStatistics = stats["grams"]
        if route.kind != "neuron" or not grams.has(name):
            return self._fallback.merge_tensor(name, base, task_vectors, route, stats["fallback"])
        if base.numel() == 0:  # an empty weight has nothing to solve (and no neuron view)
            return torch.zeros_like(base)
        rows = route.to_neurons(task_vectors, leading=1)
        delta = regmean_solve(rows, grams.read(name, torch.float64), self.alpha)
        return route.from_neurons(delta, base.shape)
