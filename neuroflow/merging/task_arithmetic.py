"""Task Arithmetic (Ilharco et al., ICLR 2023): add the scaled sum of the task vectors."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from neuroflow.merging.base import MergeMethod
from neuroflow.merging.routing import Route
from neuroflow.merging.steps import scale_
from neuroflow.merging.validation import check_finite


class TaskArithmetic(MergeMethod):
    """Task Arithmetic: `theta = theta_0 + scaling * sum_t tau_t`.

    Args:
        scaling: coefficient applied to the summed task vectors (finite; 0.3 is the usual choice
            without validation).
    """

    name = "task_arithmetic"
    linear_hparams = ("scaling",)

    def __init__(self, scaling: float = 0.3) -> None:
        self.scaling = check_finite(self, "scaling", scaling)

    def merge_tensor(self, name: str, base: Tensor, task_vectors: Tensor, route: Route, stats: dict[str, Any]) -> Tensor:
        return scale_(task_vectors.sum(dim=0), self.scaling)

    def separable(self, route: Route) -> bool:
        # Element-wise (a subclass with its own merge_tensor must say so itself).
        return type(self).merge_tensor is TaskArithmetic.merge_tensor
