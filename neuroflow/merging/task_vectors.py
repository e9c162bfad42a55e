"""Streamed access to the task vectors `tau_t = theta_t - theta_0`, one tensor at a time.

Methods see the experts only through `TaskVectors`: `stack(name)` gives the `(T, *shape)` task
vectors of one tensor, iteration streams every merged tensor once, and `trim_statistics` runs the
exact global magnitude selection over those passes. Every pass computes `tau` with the same code, so
a threshold chosen in the statistics pass is compared against bit-identical values when merging.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import Tensor

from neuroflow.merging.routing import Route
from neuroflow.merging.select import TrimStatistics, streamed_trim_statistics
from neuroflow.merging.sources import ExpertSource


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every lower precision is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class TaskVectors:
    """The task vectors of the merged tensors, read lazily from the base and the experts.

    Args:
        base: the pre-trained weights `theta_0` (any mapping; may be lazy).
        experts: the T experts.
        routing: the route of every tensor of `base`; tensors routed "skip" are not merged.
    """

    def __init__(self, base: Mapping[str, Tensor], experts: ExpertSource, routing: Mapping[str, Route]) -> None:
        self.base = base
        self.experts = experts
        self.routing = routing
        self.names = [name for name in base if routing[name].kind != "skip"]
        self._trim_cache: dict[float, TrimStatistics] = {}

    @property
    def num_tasks(self) -> int:
        return len(self.experts)

    @property
    def selection_dtype(self) -> torch.dtype:
        """The dtype magnitudes are ranked in: float64 if any merged tensor is float64."""
        dtypes = {compute_dtype(self.base[name].dtype) for name in self.names}
        return torch.float64 if torch.float64 in dtypes else torch.float32

    def stack(self, name: str) -> Tensor:
        """The task vectors of tensor `name`, shape `(T, *shape)`, in its compute dtype.

        Args:
            name: a merged tensor name.
        """
        base = self.base[name]
        dtype = compute_dtype(base.dtype)
        out = torch.empty((self.num_tasks, *base.shape), dtype=dtype)
        for i in range(self.num_tasks):
            out[i] = self.experts.task_vector(i, name, base, dtype)
        return out

    def __iter__(self) -> Iterator[tuple[str, Tensor]]:
        for name in self.names:
            yield name, self.stack(name)

    def trim_statistics(self, mask_rate: float) -> TrimStatistics:
        """Exact per-task global magnitude threshold and removed-mass ratio over all merged tensors.

        Args:
            mask_rate: fraction of entries dropped by magnitude, in [0, 1].
        """
        if mask_rate not in self._trim_cache:
            self._trim_cache[mask_rate] = streamed_trim_statistics(
                lambda: (values for _, values in self),
                num_tasks=self.num_tasks,
                mask_rate=mask_rate,
                dtype=self.selection_dtype,
            )
        return self._trim_cache[mask_rate]
