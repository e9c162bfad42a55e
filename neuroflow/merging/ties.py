"""TIES-Merging (Yadav et al., NeurIPS 2023): trim, elect sign, disjoint mean, scale."""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor

from neuroflow.merging.base import MergeMethod
from neuroflow.merging.routing import Route
from neuroflow.merging.steps import TieFallback, scale_, tensor_threshold, ties_merge
from neuroflow.merging.task_vectors import TaskVectors
from neuroflow.merging.validation import check_choice, check_finite, check_range


class TIES(MergeMethod):
    """TIES-Merging: keep each task's largest-magnitude entries, elect a sign per entry by summed
    mass, average the entries that agree with it, then scale.

    Args:
        mask_rate: fraction of each task vector's entries dropped by magnitude, in [0, 1) (0.8 keeps
            the top 20%).
        scope: where the magnitude threshold is taken: "global" over all merged tensors of a task
            (as in the TIES paper) or "tensor" (per tensor).
        scaling: coefficient applied to the merged task vector (finite).
    """

    name = "ties"
    linear_hparams = ("scaling",)

    def __init__(self, mask_rate: float = 0.8, scope: Literal["global", "tensor"] = "global", scaling: float = 1.0) -> None:
        # mask_rate 1 would trim every entry of every task: nothing left to merge.
        self.mask_rate = check_range(self, "mask_rate", mask_rate, 0.0, 1.0, high_inclusive=False)
        self.scope = check_choice(self, "scope", scope, ("global", "tensor"))
        self.scaling = check_finite(self, "scaling", scaling)

    def prepare(self, task_vectors: TaskVectors) -> dict[str, Any]:
        if self.scope == "global":
            return {"trim": task_vectors.trim_statistics(self.mask_rate)}
        return {}

    def merge_tensor(self, name: str, base: Tensor, task_vectors: Tensor, route: Route, stats: dict[str, Any]) -> Tensor:
        if self.scope == "global":
            thresholds = stats["trim"].thresholds
        else:
            thresholds = [tensor_threshold(tv, self.mask_rate) for tv in task_vectors]
        return scale_(ties_merge(task_vectors, thresholds=thresholds), self.scaling)

    def separable(self, route: Route) -> bool:
        # Element-wise given the global thresholds; the sign election's tensor-wide tie fallback
        # is carried across blocks by `tie`. Per-tensor thresholds need the whole tensor.
        return self.scope == "global" and type(self).merge_tensor is TIES.merge_tensor

    def merge_rows(self, name: str, base: Tensor, task_vectors: Tensor, route: Route, stats: dict[str, Any], tie: TieFallback) -> Tensor:
        return scale_(ties_merge(task_vectors, thresholds=stats["trim"].thresholds, tie=tie), self.scaling)
