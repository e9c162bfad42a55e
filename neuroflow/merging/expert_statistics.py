"""Per-expert statistics of the training data, for the data-aware methods (RegMean, Fisher merging).

Those methods need more than the weights: a statistic of each expert computed on its own training
data (the Gram matrix of a linear layer's inputs, the diagonal Fisher of a tensor), keyed by tensor
name. Sources provide them through `ExpertSource.statistics(i, kind)`; `ExpertStatistics` fetches
them for a method in `prepare`, checks their presence and shapes before any merge work (from file
headers where the mapping is lazy), and reads one tensor's statistics at a time while merging.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import Tensor

from neuroflow.merging.sources import tensor_meta
from neuroflow.merging.task_vectors import TaskVectors
from neuroflow.merging.validation import MergeInputError

STATS_COMMAND = "python -m neuroflow stats"


def fan_in(shape: Sequence[int], axis: int) -> int:
    """Inputs per neuron of a weight whose neurons lie along `axis` (the Gram's side length).

    Args:
        shape: the weight's shape.
        axis: its neuron axis (`Route.axis`).
    """
    return math.prod(s for i, s in enumerate(shape) if i != axis)


class ExpertStatistics(dict):
    """The statistics of one kind of every expert, read lazily, one tensor at a time.

    The object is a dict holding only its JSON-friendly summary (kind, number of experts): it
    travels in the `stats` that `prepare` returns, and the engine records those in the merge card,
    where Gram matrices must never land.

    Args:
        task_vectors: the merge's task vectors (its `experts` source provides the statistics).
        kind: the statistic, e.g. "regmean" or "fisher".
        method: the method's name for error messages.
    """

    def __init__(self, task_vectors: TaskVectors, kind: str, method: str) -> None:
        source = task_vectors.experts
        mappings = []
        for i in range(len(source)):
            found = source.statistics(i, kind)
            if found is None:
                raise MergeInputError(
                    f"{method} needs '{kind}' statistics of every expert, and {source.describe(i)} has none; "
                    f"statistics must be computed first with `{STATS_COMMAND}`"
                )
            mappings.append(found)
        super().__init__(kind=kind, experts=len(mappings))
        self._source = source
        self._mappings: list[Mapping[str, Tensor]] = mappings
        self._kind = kind
        self._method = method

    def has(self, name: str) -> bool:
        """Whether any expert has a statistic for tensor `name`."""
        return any(name in m for m in self._mappings)

    def require(self, name: str, shape: Sequence[int]) -> None:
        """Check that every expert has a statistic of `shape` for tensor `name` (no data read).

        Args:
            name: the tensor name.
            shape: the expected shape of each expert's statistic.
        """
        for i, mapping in enumerate(self._mappings):
            if name not in mapping:
                raise MergeInputError(
                    f"{self._method}: {self._source.describe(i)} has no '{self._kind}' statistic for tensor "
                    f"{name!r} while other experts have one; statistics must be computed first with "
                    f"`{STATS_COMMAND}` for every expert"
                )
            found, _ = tensor_meta(mapping, name)
            if tuple(found) != tuple(shape):
                raise MergeInputError(
                    f"{self._method}: the '{self._kind}' statistic of tensor {name!r} of {self._source.describe(i)} "
                    f"has shape {tuple(found)}, expected {tuple(shape)}"
                )

    def read(self, name: str, dtype: torch.dtype, nonnegative: bool = False) -> Iterator[Tensor]:
        """Each expert's statistic of tensor `name` in turn, on the CPU in `dtype`.

        One at a time, so that accumulating methods hold one `(fan_in, fan_in)` Gram, not T of them.

        Args:
            name: the tensor name (checked with `require` in `prepare`).
            dtype: the computation dtype.
            nonnegative: also refuse negative entries (a diagonal Fisher is a mean of squares).
        """
        for i, mapping in enumerate(self._mappings):
            value = mapping[name].detach().to(device="cpu", dtype=dtype)
            bad = None
            if not bool(torch.isfinite(value).all()):
                bad = "NaN or Inf values"
            elif nonnegative and bool((value < 0).any()):
                bad = "negative values"
            if bad is not None:
                raise MergeInputError(
                    f"{self._method}: the '{self._kind}' statistic of tensor {name!r} of "
                    f"{self._source.describe(i)} contains {bad}; refusing to merge"
                )
            yield value
