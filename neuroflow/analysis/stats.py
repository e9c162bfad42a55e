"""Per-group accumulators of the analysis, and their JSON-ready summaries.

Every statistic is kept as sums (energies, Gram entries, integer counts) so tensors add into their
layer and layers into the model exactly; fractions, rates and cosines are formed only in
`GroupStats.summary`. Undefined values (a task that changed nothing in a layer, no overlapping
entries) are `None` in JSON, never 0, so they cannot be mistaken for "no conflict".
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from neuroflow.analysis.conflicts import SignCounts
from neuroflow.analysis.masks import jaccard
from neuroflow.analysis.similarity import cosine_matrix
from neuroflow.analysis.subspace import parallel_fraction


def _zeros(*shape: int, dtype: torch.dtype = torch.float64) -> Tensor:
    return torch.zeros(*shape, dtype=dtype)


def ratio(num: Tensor | float, den: Tensor | float) -> Tensor:
    """`num / den` element-wise as float64, NaN where `den` is 0.

    Args:
        num: numerators.
        den: denominators (broadcastable).
    """
    num, den = torch.as_tensor(num, dtype=torch.float64), torch.as_tensor(den, dtype=torch.float64)
    return torch.where(den > 0, num / torch.where(den > 0, den, 1.0), torch.nan)


def jsonable(values: Tensor | float) -> Any:
    """Floats (or nested lists of them) with NaN as None, rounded to 6 significant digits;
    integers (counts) as they are."""
    if isinstance(values, Tensor):
        values = values.tolist()
    if isinstance(values, list):
        return [jsonable(v) for v in values]
    if isinstance(values, int) or values is None:  # counts stay exact integers
        return values
    if math.isnan(values):
        return None
    return float(f"{values:.6g}")


class GroupStats:
    """Sums over the tensors of one group (a tensor, a layer, the model), for T tasks.

    Attributes:
        num_tasks: T.
        numel: merged scalars per task.
        tensors: merged tensors; `neuron_tensors` of them neuron-routed, holding `neuron_rows`
            neurons and `neuron_numel` scalars.
        parallel, orthogonal: per task, energies of the raw task vectors (neuron tensors only).
        parallel_trimmed, orthogonal_trimmed: the same after the trim.
        gram: `(T, T)` Gram matrix of the raw task vectors.
        support: per task, entries kept by the trim; `intersection`: per pair, entries both keep.
        signs: sign counts of the trimmed task vectors.
        lost_mass, kept_mass: per task, trimmed L1 mass losing the sign election, and all of it.

    Args:
        num_tasks: T.
    """

    def __init__(self, num_tasks: int) -> None:
        t = self.num_tasks = num_tasks
        self.numel = self.tensors = self.neuron_tensors = 0
        self.neuron_rows = self.neuron_numel = 0
        self.parallel, self.orthogonal = _zeros(t), _zeros(t)
        self.parallel_trimmed, self.orthogonal_trimmed = _zeros(t), _zeros(t)
        self.lost_mass, self.kept_mass = _zeros(t), _zeros(t)
        self.gram = _zeros(t, t)
        self.support = _zeros(t, dtype=torch.int64)
        self.intersection = _zeros(t, t, dtype=torch.int64)
        self.signs = SignCounts(0, 0, _zeros(t, dtype=torch.int64), _zeros(t, dtype=torch.int64),
                                _zeros(t, t, dtype=torch.int64), _zeros(t, t, dtype=torch.int64))

    def add(self, other: GroupStats) -> None:
        """Add `other`'s sums into this group (in place).

        Args:
            other: the statistics of a tensor (or group) of the same T tasks.
        """
        self.numel += other.numel
        self.tensors += other.tensors
        self.neuron_tensors += other.neuron_tensors
        self.neuron_rows += other.neuron_rows
        self.neuron_numel += other.neuron_numel
        for name in ("parallel", "orthogonal", "parallel_trimmed", "orthogonal_trimmed", "gram", "support",
                     "intersection", "lost_mass", "kept_mass"):
            getattr(self, name).add_(getattr(other, name))
        mine, theirs = self.signs, other.signs
        mine.overlap += theirs.overlap
        mine.conflicts += theirs.conflicts
        for name in ("task_overlap", "task_conflicts", "pair_both", "pair_opposite"):
            getattr(mine, name).add_(getattr(theirs, name))

    def summary(self, tasks: list[str], total: GroupStats | None = None) -> dict[str, Any]:
        """Fractions, rates and cosines of this group, JSON-ready.

        Args:
            tasks: the task names, in order.
            total: the whole model's statistics, for this group's shares of each task's update
                energy and conflicts (omitted when None).
        """
        def per_task(values: Tensor) -> dict[str, Any]:
            return dict(zip(tasks, jsonable(values)))

        def pairwise(matrix: Tensor, diagonal: float | None) -> list[list[Any]]:
            out = jsonable(matrix)
            for i in range(len(tasks)):
                out[i][i] = diagonal
            return out

        signs = self.signs
        out: dict[str, Any] = {
            "numel": self.numel,
            "tensors": self.tensors,
            "neuron_tensors": self.neuron_tensors,
            "parallel_fraction": per_task(parallel_fraction(self.parallel, self.orthogonal)),
            "parallel_fraction_trimmed": per_task(parallel_fraction(self.parallel_trimmed, self.orthogonal_trimmed)),
            # A random direction in R^n has 1/n of its energy along any fixed vector: rows / scalars
            # is that chance level for rows of equal energy (an update with no preference).
            "parallel_chance": jsonable(float(ratio(self.neuron_rows, self.neuron_numel))),
            "norm": per_task(self.gram.diagonal().clamp(min=0).sqrt()),
            "density": per_task(ratio(self.support, self.numel)),
            "conflict_rate": jsonable(float(ratio(signs.conflicts, signs.overlap))),
            "conflict_rate_per_task": per_task(ratio(signs.task_conflicts, signs.task_overlap)),
            "election_loss": per_task(ratio(self.lost_mass, self.kept_mass)),
            "pairwise_conflict": pairwise(ratio(signs.pair_opposite, signs.pair_both), None),
            "jaccard": jsonable(jaccard(self.support, self.intersection)),
            "cosine": jsonable(cosine_matrix(self.gram)),
            "counts": {"overlap": signs.overlap, "conflicts": signs.conflicts,
                       "task_conflicts": per_task(signs.task_conflicts)},
        }
        if total is not None:
            out["energy_share"] = per_task(ratio(self.gram.diagonal(), total.gram.diagonal()))
            out["conflict_share"] = per_task(ratio(signs.task_conflicts, total.signs.task_conflicts))
        return out
