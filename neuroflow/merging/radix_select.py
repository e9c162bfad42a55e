"""Exact k-th smallest magnitudes by radix select: the window select's fallback (`select.py`).

For non-negative floats (+0, subnormals, inf included) the bit pattern read as a signed integer is
ordered like the value, so the k-th smallest pattern is found digit by digit: each pass builds, per
task, a histogram of the next 16 bits among the entries matching the prefix chosen so far (2 passes
for float32, 4 for float64), accumulating the L1 mass below on the way.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from neuroflow.merging.magnitude_stream import _INT_VIEW, Stream, _blocks

_DIGIT_BITS = 16
# Entries per task processed at once, and buffered before one bincount call: bounds the
# temporaries of a pass while keeping the full-width histogram cost amortised.
_COLUMN_CHUNK = 1 << 18


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


def radix_select(
    stream: Stream, num_tasks: int, numel: int, k: int, dtype: torch.dtype
) -> tuple[list[Tensor], list[float]]:
    """Exact selection by 16-bit digits of the magnitudes' bit patterns (2 or 4 passes)."""
    int_dtype = _INT_VIEW[dtype]
    value_bits = torch.finfo(dtype).bits - 1
    prefix = torch.zeros(num_tasks, dtype=torch.int64)  # bits above the current digit
    rank = torch.full((num_tasks,), k, dtype=torch.int64)  # rank still to find inside the prefix
    mass_below = torch.zeros(num_tasks, dtype=torch.float64)
    total_mass = torch.zeros(num_tasks, dtype=torch.float64)

    for level, (shift, width) in enumerate(_levels(dtype)):
        bins = 1 << width
        histogram = _Histogram(num_tasks, bins)
        prefixes = prefix.tolist()
        seen = 0
        for block in _blocks(stream, 1, num_tasks, dtype):
            seen += block.shape[1]
            for start in range(0, block.shape[1], _COLUMN_CHUNK):
                for t in range(num_tasks):
                    magnitude = block[t, start : start + _COLUMN_CHUNK]
                    bits = magnitude.view(int_dtype)
                    if level > 0:
                        # Only entries inside the bucket chosen so far can hold the k-th value.
                        match = (bits >> (shift + width)) == prefixes[t]
                        bits, magnitude = bits[match], magnitude[match]
                    digit = bits >> shift
                    if shift + width < value_bits:
                        digit = digit & (bins - 1)
                    histogram.add(t, digit, magnitude)
        if seen != numel:
            raise ValueError(f"the stream yielded {seen} scalars per task, expected numel={numel}")
        counts, mass = histogram.result()
        if level == 0:
            total_mass = mass.sum(dim=1)
        cumulative = counts.cumsum(dim=1)
        # First bucket whose cumulative count reaches the rank still to find.
        bucket = torch.searchsorted(cumulative, rank[:, None]).squeeze(1)
        before = torch.where(bucket > 0, cumulative.gather(1, (bucket - 1).clamp(min=0)[:, None]).squeeze(1), 0)
        rank -= before
        below = torch.arange(bins)[None, :] < bucket[:, None]
        mass_below += torch.where(below, mass, 0.0).sum(dim=1)
        prefix = (prefix << width) | bucket

    bits = prefix.to(int_dtype)
    thresholds = [bits[t].view(dtype).clone() for t in range(num_tasks)]
    sigma = [float(m / tot) if tot > 0 else 0.0 for m, tot in zip(mass_below, total_mass)]
    return thresholds, sigma


def kth_smallest(values: Tensor, rank: int) -> Tensor:
    """The `rank`-th smallest (1-based) of non-negative, non-NaN CPU floats, as a 0-d tensor of
    their dtype (the same value as `kthvalue`).

    When the values' bit patterns span no more integers than there are values, they are counted
    in one histogram over that span: the window select's candidates are task values of bfloat16
    checkpoints, millions of entries with a few thousand distinct values, where numpy's
    introselect ran 10-15x slower (0.3-0.4 s per task at 210M parameters). Otherwise introselect.

    Args:
        values: 1-D, float32 or float64.
        rank: in [1, values.numel()].
    """
    values = values.detach().contiguous()
    array, bits = values.numpy(), values.view(_INT_VIEW[values.dtype]).numpy()
    if not 1 <= rank <= array.size:
        raise ValueError(f"rank {rank} outside [1, {array.size}]")
    low, high = int(bits.min()), int(bits.max())
    if high - low < max(array.size, 1 << 16):
        # Counted a chunk at a time: bincount takes platform integers, and one conversion of all
        # the candidates (22M per task at 1.26B parameters) held 0.2 GiB beside them.
        counts = np.zeros(high - low + 1, np.int64)
        for start in range(0, bits.size, _COLUMN_CHUNK):
            chunk = bits[start : start + _COLUMN_CHUNK] - bits.dtype.type(low)
            counts += np.bincount(chunk.astype(np.intp), minlength=counts.size)
        index = int(np.searchsorted(np.cumsum(counts), rank))  # first bucket reaching the rank
        kth = np.array([low + index], dtype=bits.dtype).view(array.dtype)
    else:
        kth = np.partition(array, rank - 1)[rank - 1 : rank].copy()
    return torch.from_numpy(kth).reshape(())
