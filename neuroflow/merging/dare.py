"""DARE (Yu et al., ICML 2024): randomly drop task-vector entries, rescale the rest, then merge."""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import torch
from torch import Tensor

from neuroflow.merging.base import MergeMethod
from neuroflow.merging.routing import Route
from neuroflow.merging.steps import scale_, ties_merge
from neuroflow.merging.validation import check_choice, check_finite, check_int, check_range


def keep_mask(shape: torch.Size, drop_rate: float, seed: int, expert: int, name: str) -> Tensor:
    """Bernoulli keep mask (True with probability `1 - drop_rate`) from a stream seeded by
    `(seed, expert, name)`, so a tensor's mask does not depend on which tensors came before it.

    Args:
        shape: the tensor's shape.
        drop_rate: probability of dropping an entry.
        seed: the user's seed.
        expert: the expert index.
        name: the tensor name.
    """
    digest = hashlib.blake2b(f"{seed}\x00{expert}\x00{name}".encode(), digest_size=8).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))
    # Drawn in float32 whatever the compute dtype, so float32 and float64 merges drop the same entries.
    return torch.rand(shape, generator=generator, dtype=torch.float32) >= drop_rate


class DARE(MergeMethod):
    """DARE: drop each task-vector entry with probability `drop_rate`, rescale kept entries by
    `1 / (1 - drop_rate)`, merge (sum, or TIES sign election and disjoint mean), then scale.

    Args:
        drop_rate: probability of dropping each entry, in [0, 1).
        seed: integer seed of the drop masks; the mask of a tensor depends only on (seed, expert index, name).
        then: "task_arithmetic" (sum the rescaled task vectors) or "ties" (sign election and disjoint
            mean, no further trimming).
        scaling: coefficient applied to the merged task vector (finite).
    """

    name = "dare"
    linear_hparams = ("scaling",)

    def __init__(
        self,
        drop_rate: float = 0.9,
        seed: int = 0,
        then: Literal["task_arithmetic", "ties"] = "task_arithmetic",
        scaling: float = 1.0,
    ) -> None:
        # drop_rate 1 would drop everything and rescale by 1 / 0.
        self.drop_rate = check_range(self, "drop_rate", drop_rate, 0.0, 1.0, high_inclusive=False)
        self.seed = check_int(self, "seed", seed)
        self.then = check_choice(self, "then", then, ("task_arithmetic", "ties"))
        self.scaling = check_finite(self, "scaling", scaling)

    def merge_tensor(self, name: str, base: Tensor, task_vectors: Tensor, route: Route, stats: dict[str, Any]) -> Tensor:
        if self.drop_rate > 0.0:
            for i, row in enumerate(task_vectors):
                keep = keep_mask(row.shape, self.drop_rate, self.seed, i, name)
                row.copy_(torch.where(keep, row / (1.0 - self.drop_rate), torch.zeros((), dtype=row.dtype)))
        merged = ties_merge(task_vectors) if self.then == "ties" else task_vectors.sum(dim=0)
        return scale_(merged, self.scaling)
