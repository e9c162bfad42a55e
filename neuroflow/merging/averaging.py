"""Weight averaging ("model soup"): the mean of the experts' weights."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from neuroflow.merging.base import MergeMethod
from neuroflow.merging.routing import Route


class WeightAveraging(MergeMethod):
    """Weight averaging: `theta = mean_t theta_t` (equivalently `theta_0 + mean_t tau_t`)."""

    name = "averaging"

    def merge_tensor(self, name: str, base: Tensor, task_vectors: Tensor, route: Route, stats: dict[str, Any]) -> Tensor:
        return task_vectors.mean(dim=0)
