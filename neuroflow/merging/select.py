"""Exact, streamed magnitude thresholds: the k-th smallest `|tau_t|` over a whole model.

The global trim of TIES and NeuroMerging needs, per task, `kthvalue` of `|tau_t|` over every merged
scalar. Concatenating the model into one vector costs O(model) memory per task; instead this module
runs a radix select over the IEEE bit patterns. For non-negative floats (including +0, subnormals
and inf) the bit pattern read as a signed integer is ordered like the value, so selecting the k-th
smallest integer selects the k-th smallest float exactly. Each pass streams every tensor once and
builds, per task, a histogram of the next 16 bits among the entries whose higher bits match the
prefix chosen so far: 2 passes for float32, 4 for float64. The mass below the chosen bucket is
accumulated on the way, which gives the removed L1 mass (`sigma_t`) without another pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from neuroflow.merging.steps import kth_index

_DIGIT_BITS = 16
# Entries per task handled by one bincount call: bounds the temporaries of a pass.
_COLUMN_CHUNK = 1 << 20
_INT_VIEW = {torch.float32: torch.int32, torch.float64: torch.int64}


@dataclass(frozen=True)
class TrimStatistics:
    """Per-task statistics of a magnitude trim over all merged scalars.

    Attributes:
        mask_rate: fraction of entries dropped by magnitude.
        numel: number of merged scalars per task (P).
        k: the 1-based rank of the threshold (`floor(P * mask_rate)`; 0 keeps everything).
        thresholds: per task, the k-th smallest magnitude as a 0-dim tensor (None when k = 0).
        sigma: per task, L1 mass removed by the trim / L1 mass of the task vector.
    """

    mask_rate: float
    numel: int
    k: int
    thresholds: list[Tensor | None]
    sigma: list[float]

    def summary(self) -> dict:
        """JSON-friendly view for merge cards."""
        return {
            "mask_rate": self.mask_rate,
            "numel": self.numel,
            "k": self.k,
            "thresholds": [None if t is None else float(t) for t in self.thresholds],
            "sigma_per_task": list(self.sigma),
        }


class _Histogram:
    """Per-task counts and L1 mass per digit; small inputs are batched into one bincount call,
    so a model of many small tensors does not pay a full-width histogram per tensor."""

    def __init__(self, num_tasks: int, bins: int) -> None:
        self.bins = bins
        self.counts = torch.zeros(num_tasks, bins, dtype=torch.int64)
        self.mass = torch.zeros(num_tasks, bins, dtype=torch.float64)
        self.pending: list[list[tuple[Tensor, Tensor]]] = [[] for _ in range(num_tasks)]
        self.pending_size = [0] * num_tasks

    def add(self, task: int, digit: Tensor, magnitude: Tensor) -> None:
        self.pending[task].append((digit, magnitude))
        self.pending_size[task] += digit.numel()
        if self.pending_size[task] >= _COLUMN_CHUNK:
            self._flush(task)

    def _flush(self, task: int) -> None:
        if not self.pending[task]:
            return
        digits, magnitudes = zip(*self.pending[task])
        digit = torch.cat([d.to(torch.int64) for d in digits]) if len(digits) > 1 else digits[0]
        weight = torch.cat([m.to(torch.float64) for m in magnitudes]) if len(digits) > 1 else magnitudes[0].to(torch.float64)
        self.counts[task] += torch.bincount(digit, minlength=self.bins)
        self.mass[task] += torch.bincount(digit, weights=weight, minlength=self.bins)
        self.pending[task], self.pending_size[task] = [], 0

    def result(self) -> tuple[Tensor, Tensor]:
        for task in range(len(self.pending)):
            self._flush(task)
        return self.counts, self.mass


def _levels(dtype: torch.dtype) -> list[tuple[int, int]]:
    """(shift, width) of each radix digit, most significant first; the sign bit is always 0."""
    value_bits = torch.finfo(dtype).bits - 1
    shifts = list(range(0, value_bits, _DIGIT_BITS))[::-1]
    return [(s, min(_DIGIT_BITS, value_bits - s)) for s in shifts]


def streamed_trim_statistics(
    passes: Callable[[], Iterable[Tensor]],
    num_tasks: int,
    mask_rate: float,
    dtype: torch.dtype = torch.float32,
) -> TrimStatistics:
    """Exact per-task k-th smallest magnitude and removed-mass ratio, from per-tensor passes.

    Args:
        passes: called once per pass; returns an iterable over the merged tensors, each given as
            the stacked per-task values of shape `(T, ...)` (any float dtype that `dtype` holds
            exactly). Every call must yield the same values.
        num_tasks: T, the size of dim 0 of every yielded tensor.
        mask_rate: fraction of entries dropped by magnitude, in [0, 1].
        dtype: float32 or float64, the dtype the magnitudes are compared in.
    """
    if dtype not in _INT_VIEW:
        raise ValueError(f"selection dtype must be float32 or float64, got {dtype}")
    if not 0.0 <= mask_rate <= 1.0:
        raise ValueError(f"mask_rate must be in [0, 1], got {mask_rate}")
    int_dtype = _INT_VIEW[dtype]
    value_bits = torch.finfo(dtype).bits - 1
    prefix = torch.zeros(num_tasks, dtype=torch.int64)  # bits above the current digit
    rank = torch.zeros(num_tasks, dtype=torch.int64)  # rank still to find inside the prefix
    mass_below = torch.zeros(num_tasks, dtype=torch.float64)
    total_mass = torch.zeros(num_tasks, dtype=torch.float64)
    numel = 0
    k = 0

    for level, (shift, width) in enumerate(_levels(dtype)):
        bins = 1 << width
        histogram = _Histogram(num_tasks, bins)
        prefixes = prefix.tolist()
        for values in passes():
            if values.shape[0] != num_tasks:
                raise ValueError(f"expected {num_tasks} task rows, got shape {tuple(values.shape)}")
            flat = values.detach().reshape(num_tasks, -1)
            if level == 0:
                numel += flat.shape[1]
            for start in range(0, flat.shape[1], _COLUMN_CHUNK):
                for t in range(num_tasks):
                    magnitude = flat[t, start : start + _COLUMN_CHUNK].abs().to(dtype)
                    bits = magnitude.view(int_dtype)
                    if level > 0:
                        # Only entries inside the bucket chosen so far can hold the k-th value.
                        match = (bits >> (shift + width)) == prefixes[t]
                        bits, magnitude = bits[match], magnitude[match]
                    digit = bits >> shift
                    if shift + width < value_bits:
                        digit = digit & (bins - 1)
                    histogram.add(t, digit, magnitude)
        counts, mass = histogram.result()
        if level == 0:
            total_mass = mass.sum(dim=1)
            k = kth_index(numel, mask_rate)
            if k == 0:
                break
            rank.fill_(k)
        cumulative = counts.cumsum(dim=1)
        # First bucket whose cumulative count reaches the rank still to find.
        bucket = torch.searchsorted(cumulative, rank[:, None]).squeeze(1)
        before = torch.where(bucket > 0, cumulative.gather(1, (bucket - 1).clamp(min=0)[:, None]).squeeze(1), 0)
        rank -= before
        below = torch.arange(bins)[None, :] < bucket[:, None]
        mass_below += torch.where(below, mass, 0.0).sum(dim=1)
        prefix = (prefix << width) | bucket

    if k == 0:
        thresholds: list[Tensor | None] = [None] * num_tasks
        sigma = [0.0] * num_tasks
    else:
        bits = prefix.to(int_dtype)
        thresholds = [bits[t].view(dtype).clone() for t in range(num_tasks)]
        sigma = [float(m / tot) if tot > 0 else 0.0 for m, tot in zip(mass_below, total_mass)]
    return TrimStatistics(mask_rate=mask_rate, numel=numel, k=k, thresholds=thresholds, sigma=sigma)
