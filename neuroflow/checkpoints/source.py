"""Checkpoint experts as a `neuroflow.merging.ExpertSource`: model folders and peft adapters.

The engine asks for one tensor of one expert at a time. A full fine-tune (`CheckpointFolder`) hands
out its stored weights; an adapter (`AdapterExpert`) computes its task vector for that tensor only.
Experts only need the base's dtype *family* (a float32 fine-tune of a bfloat16 base is fine): the
task vector is computed in float32 either way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from neuroflow.checkpoints.adapter import AdapterExpert
from neuroflow.checkpoints.folder import CheckpointFolder
from neuroflow.merging.sources import ExpertSource, as_task_vector

Expert = CheckpointFolder | AdapterExpert


class CheckpointExperts(ExpertSource):
    """Full fine-tunes read lazily from their folders.

    Args:
        base: the base weights (names, shapes and dtypes come from it for adapters).
        experts: one `CheckpointFolder` (or `AdapterExpert`, see `checkpoint_experts`) per expert.
        names: how errors name each expert (its path or hub id).
        rows: tensor name -> number of leading rows the merge uses (the base's vocabulary size
            when experts added tokens, `vocab="shared_rows"`).
    """

    def __init__(
        self,
        base: Mapping[str, Tensor],
        experts: Sequence[Expert],
        names: Sequence[str],
        rows: Mapping[str, int] | None = None,
    ) -> None:
        self.base, self.experts, self.names = base, list(experts), list(names)
        self.rows = dict(rows or {})

    def __len__(self) -> int:
        return len(self.experts)

    def keys(self, i: int) -> list[str]:
        expert = self.experts[i]
        return list(self.base) if isinstance(expert, AdapterExpert) else list(expert)

    def meta(self, i: int, name: str) -> tuple[tuple[int, ...], torch.dtype]:
        expert = self.experts[i]
        if isinstance(expert, AdapterExpert):
            return self.base.meta(name)
        shape, dtype = expert.meta(name)
        if name in self.rows:
            shape = (self.rows[name], *shape[1:])
        base_dtype = self.base.meta(name)[1] if name in self.base else dtype
        # Same family: the float task vector is exact whatever the float width it was saved in.
        if dtype.is_floating_point and base_dtype.is_floating_point:
            dtype = base_dtype
        return tuple(shape), dtype

    def get(self, i: int, name: str) -> Tensor:
        expert = self.experts[i]
        if isinstance(expert, AdapterExpert):
            base = self.base[name]
            return (base.float() + expert.task_vector(name, base, torch.float32)).to(base.dtype)
        tensor = expert[name]
        return tensor[: self.rows[name]] if name in self.rows else tensor

    def get_rows(self, i: int, name: str, start: int, stop: int) -> Tensor:
        expert = self.experts[i]
        if isinstance(expert, AdapterExpert):
            return super().get_rows(i, name, start, stop)
        if name in self.rows:
            stop = min(stop, self.rows[name])
        return expert.read_rows(name, start, stop)

    def get_strided(self, i: int, name: str, stride: int) -> Tensor | None:
        expert = self.experts[i]
        if isinstance(expert, AdapterExpert):
            return None
        numel = None
        if name in self.rows:
            shape = expert.meta(name)[0]
            numel = self.rows[name] * math.prod(shape[1:])
        return expert.read_strided(name, stride, numel)

    def describe(self, i: int) -> str:
        return f"expert {i} ({self.names[i]})"


class AdapterAwareExperts(CheckpointExperts):
    """`CheckpointExperts` where some experts are adapters: every task vector comes from
    `task_vector` (the engine then reads whole tensors in its statistics passes)."""

    def task_vector(self, i: int, name: str, base: Tensor, dtype: torch.dtype, out: Tensor | None = None) -> Tensor:
        expert = self.experts[i]
        if isinstance(expert, AdapterExpert):
            return expert.task_vector(name, base, dtype, out=out)
        return as_task_vector(self.get(i, name), base, dtype, False, out=out)


def checkpoint_experts(
    base: Mapping[str, Tensor], experts: Sequence[Expert], names: Sequence[str], rows: Mapping[str, int] | None = None
) -> CheckpointExperts:
    """The source for these experts: plain reads when all are full fine-tunes (the statistics
    passes then sample cheaply), adapter-aware otherwise.

    Args:
        base: the base weights.
        experts: folders and adapters.
        names: how errors name each expert.
        rows: see `CheckpointExperts`.
    """
    cls = AdapterAwareExperts if any(isinstance(e, AdapterExpert) for e in experts) else CheckpointExperts
    return cls(base, experts, names, rows)
