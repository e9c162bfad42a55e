"""Fisher merging (Matena & Raffel, "Merging Models with Fisher-Weighted Averaging", NeurIPS 2022).

Each expert's parameters are weighted, entry by entry, by its diagonal Fisher information `F_i` (the
mean squared gradient of its log-likelihood on its training data): `theta = sum_i F_i theta_i /
sum_i F_i`. A parameter an expert relies on (large Fisher) stays close to that expert's value; one no
expert cares about is averaged. Because the weights sum to one, the update on task vectors is the
same average: `delta = sum_i F_i tau_i / sum_i F_i`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from neuroflow.merging.base import MergeMethod
from neuroflow.merging.expert_statistics import ExpertStatistics
from neuroflow.merging.routing import Route
from neuroflow.merging.sources import tensor_meta
from neuroflow.merging.task_vectors import TaskVectors
from neuroflow.merging.validation import check_range


def fisher_average(params: Tensor, fishers: Tensor | Iterable[Tensor], eps: float = 1e-8) -> Tensor:
    """`sum_i F_i x_i / sum_i F_i` per entry, with every Fisher floored at `eps`.

    The floor keeps the division defined and, where all Fishers are (near) 0, makes the weights
    equal, i.e. the plain average; with `eps = 0` the plain average is taken explicitly there.

    Args:
        params: per-expert values (weights or task vectors), shape `(T, ...)`.
        fishers: non-negative diagonal Fishers, `(T, ...)` or T tensors of `params.shape[1:]` in turn
            (accumulated one at a time, never stacked).
        eps: the floor, >= 0.
    """
    numerator = torch.zeros(params.shape[1:], dtype=params.dtype)
    total = torch.zeros(params.shape[1:], dtype=params.dtype)
    count = 0
    for x, f in zip(params, fishers, strict=False):
        if f.shape != x.shape:
            raise ValueError(f"a Fisher of shape {tuple(f.shape)} for a parameter of shape {tuple(x.shape)}")
        weight = f.to(params.dtype)
        if eps > 0:
            weight = weight.clamp(min=eps)
        numerator.addcmul_(weight, x)
        total += weight
        count += 1
    if count != params.shape[0]:
        raise ValueError(f"got {count} Fishers for {params.shape[0]} experts")
    merged = numerator / torch.where(total > 0, total, torch.ones((), dtype=total.dtype))
    return torch.where(total > 0, merged, params.mean(dim=0))


class FisherMerging(MergeMethod):
    """Fisher merging: the diagonal-Fisher-weighted average of the experts' parameters.

    Every merged tensor with "fisher" statistics (keyed by tensor name, the tensor's shape) is
    merged with `fisher_average`; a tensor for which no expert has a Fisher (e.g. frozen during
    fine-tuning, so its task vectors are 0) gets the plain average, counted in the info as
    `averaged_tensors`. The Fishers come from the experts' `ExpertSource`
    (`statistics(i, "fisher")`, computed with `python -m neuroflow stats`) and are used as given
    (no per-expert normalisation).

    Args:
        eps: floor of every Fisher entry (1e-8 as specified for neuroflow; FusionBench's
            `minimal_fisher_weight` is 1e-6). Where all experts' Fishers are below it the result is
            the plain average.
    """

    name = "fisher"
    uses_data = True
    statistics_kind = "fisher"

    def __init__(self, eps: float = 1e-8) -> None:
        self.eps = check_range(self, "eps", eps, low=0.0)

    def prepare(self, task_vectors: TaskVectors) -> dict[str, Any]:
        fishers = ExpertStatistics(task_vectors, self.statistics_kind, type(self).__name__)
        averaged = 0
        for name in task_vectors.names:
            if fishers.has(name):
                fishers.require(name, tensor_meta(task_vectors.base, name)[0])
            else:
                averaged += 1
        return {"fishers": fishers, "averaged_tensors": averaged}

    def merge_tensor(self, name: str, base: Tensor, task_vectors: Tensor, route: Route, stats: dict[str, Any]) -> Tensor:
        fishers: ExpertStatistics = stats["fishers"]
        if not fishers.has(name):
            return task_vectors.mean(dim=0)
        return fisher_average(task_vectors, fishers.read(name, task_vectors.dtype, nonnegative=True), self.eps)
