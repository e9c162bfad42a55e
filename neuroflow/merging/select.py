"""Exact, streamed magnitude thresholds: the k-th smallest `|tau_t|` over a whole model.

The global trim of TIES and NeuroMerging needs, per task, `kthvalue` of `|tau_t|` over every merged
scalar, and the L1 mass below it (`sigma_t`). Concatenating the model into one vector costs
O(model) memory per task; this module never does. The stream hands out `(T, m)` blocks, tensor by
tensor, and two exact strategies use it:

- window select (default): a strided sample (~2^16 scalars per task) brackets the k-th value
  between two sample order statistics 6 standard deviations apart; one full pass then counts the
  entries below the bracket (and their mass) and keeps the few inside it, where `kthvalue` finds the
  exact answer. If the bracket missed (or holds too many entries) it falls back to:
- radix select: for non-negative floats (+0, subnormals, inf included) the bit pattern read as a
  signed integer is ordered like the value, so the k-th smallest pattern is found digit by digit:
  each pass builds, per task, a histogram of the next 16 bits among the entries matching the prefix
  chosen so far (2 passes for float32, 4 for float64), accumulating the mass below on the way.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from neuroflow.merging import kernels
from neuroflow.merging.magnitude_stream import _INT_VIEW, Stream, _blocks, magnitudes, task_rows, tensor_stream  # noqa: F401 (tensor_stream: re-exported)
from neuroflow.merging.radix_select import _COLUMN_CHUNK, kth_smallest, radix_select
from neuroflow.merging.steps import kth_index
from neuroflow.merging.validation import check_range

# Sample size per task of the window select, and the bracket's half-width in standard deviations
# of the sample rank (plus a few ranks of slack): a miss only costs the radix fallback.
_SAMPLE_SIZE = 1 << 16
_WINDOW_SIGMAS = 6.0



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


def streamed_trim_statistics(
    stream: Stream,
    num_tasks: int,
    numel: int,
    mask_rate: float,
    dtype: torch.dtype = torch.float32,
    strategy: Literal["auto", "radix"] = "auto",
    map_blocks: BlockMap | None = None,
) -> TrimStatistics:
    """Exact per-task k-th smallest magnitude and removed-mass ratio, from per-tensor passes.

    Args:
        stream: `stream(stride)` yields `(T, m)` blocks of every `stride`-th scalar of every merged
            tensor (any float dtype that `dtype` holds exactly); each call yields the same values.
        num_tasks: T, the size of dim 0 of every block.
        numel: P, the number of merged scalars per task.
        mask_rate: fraction of entries dropped by magnitude, in [0, 1].
        dtype: float32 or float64, the dtype the magnitudes are compared in.
        strategy: "auto" (window select, radix fallback) or "radix" (always radix select).
        map_blocks: runs the window select's per-block work of the full pass, e.g. on worker
            threads that each build and reduce whole tensors (`TaskVectors.map_chunks`); the
            result is the same either way.
    """
    if dtype not in _INT_VIEW:
        raise ValueError(f"selection dtype must be float32 or float64, got {dtype}")
    # k = P (mask_rate 1) is a valid selection here; methods that trim refuse it themselves.
    mask_rate = check_range("streamed_trim_statistics", "mask_rate", mask_rate, 0.0, 1.0)
    if strategy not in ("auto", "radix"):
        raise ValueError(f"strategy must be 'auto' or 'radix', got {strategy!r}")
    k = kth_index(numel, mask_rate)
    if k == 0:
        return TrimStatistics(mask_rate, numel, 0, [None] * num_tasks, [0.0] * num_tasks)
    found = _window_select(stream, num_tasks, numel, k, dtype, map_blocks) if strategy == "auto" else None
    if found is None:
        found = radix_select(stream, num_tasks, numel, k, dtype)
    thresholds, sigma = found
    return TrimStatistics(mask_rate, numel, k, thresholds, sigma)


class _Scratch:
    """One growing CPU buffer per role, reused block after block: a pass over a model makes
    thousands of blocks, and fresh multi-megabyte temporaries are page-faulted in every time
    (on a VM, faults cost more than the arithmetic done in the pages)."""

    def __init__(self) -> None:
        self._buffers: dict[str, Tensor] = {}

    def get(self, role: str, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        """An uninitialised tensor of `shape` and `dtype` on `role`'s buffer (valid until the next
        `get` of the same role)."""
        nbytes = math.prod(shape) * dtype.itemsize
        buffer = self._buffers.get(role)
        if buffer is None or buffer.numel() < nbytes:
            buffer = self._buffers[role] = torch.empty(nbytes, dtype=torch.uint8)
        return buffer[:nbytes].view(dtype).view(shape)


def _bracket(stream: Stream, num_tasks: int, numel: int, k: int, dtype: torch.dtype,
             map_blocks: BlockMap | None = None) -> tuple[Tensor, Tensor, int]:
    """Per-task magnitudes `[low, high]` likely to bracket the k-th value, and the most entries
    per task the full pass may keep inside it."""
    stride = max(1, numel // _SAMPLE_SIZE)
    stride += stride > 1 and stride % 2 == 0  # odd: less likely to alias with row lengths
    if stride == 1:  # small models: everything is a candidate
        return torch.zeros(num_tasks, dtype=dtype), torch.full((num_tasks,), math.inf, dtype=dtype), numel
    if map_blocks is None:
        blocks = list(_blocks(stream, stride, num_tasks, dtype))
    else:  # the same magnitudes, each block read on a worker
        blocks = list(map_blocks(lambda values: magnitudes(task_rows(values, num_tasks), dtype), stride))
    if not blocks:  # a stream short of `numel`: the full pass reports it
        return torch.zeros(num_tasks, dtype=dtype), torch.full((num_tasks,), math.inf, dtype=dtype), numel
    sample = torch.cat(blocks, dim=1)
    m = sample.shape[1]
    p = k / numel
    spread = _WINDOW_SIGMAS * math.sqrt(m * p * (1.0 - p)) + 2.0
    lo_rank, hi_rank = math.floor(p * m - spread), math.ceil(p * m + spread)  # 0-based
    low = sample.kthvalue(lo_rank + 1, dim=1).values if lo_rank >= 0 else torch.zeros(num_tasks, dtype=dtype)
    high = sample.kthvalue(hi_rank + 1, dim=1).values if hi_rank < m else torch.full((num_tasks,), math.inf, dtype=dtype)
    return low, high, 4 * (hi_rank - lo_rank + 1) * stride + (1 << 16)


class _Pages:
    """Values appended in order, packed into large pages: thousands of small tensors kept alive
    between the blocks of a pass would pin the C heap (each block's buffers are freed below
    them), so the process's RSS would grow far beyond what is live."""

    _PAGE = 1 << 20

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype, self.pages, self.used = dtype, [], 0

    def add(self, values: Tensor) -> int:
        """Append `values` (1-D); returns how many."""
        done = 0
        while done < values.numel():
            if not self.pages or self.used == self.pages[-1].numel():
                self.pages.append(torch.empty(max(self._PAGE, values.numel() - done), dtype=self.dtype))
                self.used = 0
            take = min(values.numel() - done, self.pages[-1].numel() - self.used)
            self.pages[-1][self.used : self.used + take] = values[done : done + take]
            self.used += take
            done += take
        return values.numel()

    def values(self) -> Tensor:
        """Every value appended, in order."""
        if not self.pages:
            return torch.empty(0, dtype=self.dtype)
        return torch.cat([*self.pages[:-1], self.pages[-1][: self.used]])


def _inside(magnitude: Tensor, low: Tensor, high: Tensor, scratch: _Scratch | None = None) -> list[Tensor]:
    """Per task row, the entries of `magnitude` in `[low[t], high[t]]`, in order."""
    if magnitude.device.type != "cpu":
        within = (magnitude >= low[:, None].to(magnitude.device)) & (magnitude <= high[:, None].to(magnitude.device))
        return [row[keep].cpu() for row, keep in zip(magnitude, within)]
    # numpy's boolean indexing is ~10x faster than torch's masked_select on CPU.
    values = magnitude.numpy()
    scratch = scratch or _Scratch()
    within = scratch.get("within", tuple(values.shape), torch.bool).numpy()
    upper = scratch.get("upper", tuple(values.shape), torch.bool).numpy()
    np.greater_equal(values, low.numpy()[:, None], out=within)
    np.logical_and(within, np.less_equal(values, high.numpy()[:, None], out=upper), out=within)
    return [torch.from_numpy(row[keep]) for row, keep in zip(values, within)]


@dataclass(slots=True)
class _Partial:
    """One block's share of the window select's full pass: per-task sums to add (in the dtypes
    the sequential loop added them in, so the totals are the same bits in any arrangement of the
    work), and copies of the entries inside the bracket."""

    numel: int
    total: Tensor
    below_count: Tensor
    below_mass: Tensor
    inside: list[Tensor]


def _window_partial(values: Tensor, num_tasks: int, low: Tensor, high: Tensor, dtype: torch.dtype, scratch: _Scratch) -> _Partial:
    """The full pass's work on one block (safe to run on any thread with its own `scratch`)."""
    flat = task_rows(values, num_tasks)
    if flat.dtype == dtype:
        total = torch.zeros(num_tasks, dtype=torch.float64)
        below_count = torch.zeros(num_tasks, dtype=torch.int64)
        below_mass = torch.zeros(num_tasks, dtype=torch.float64)
        window = scratch.get("inside", tuple(flat.shape), dtype)
        # The kernel adds one float64 block sum per task into its accumulators: from zero, that
        # is the block sum itself, which the caller adds to the running totals as the kernel would.
        found = kernels.window_block(flat, low, high, total, below_count, below_mass, window)
        if found is not None:
            inside = [window[t, :count].clone() for t, count in enumerate(found.tolist())]
            return _Partial(flat.shape[1], total, below_count, below_mass, inside)
    magnitude = magnitudes(flat, dtype, scratch)
    # Block sums in the block's dtype (much faster than a float64 reduction), accumulated in
    # float64 across blocks: sigma_t is exact to a few float32 ulps.
    total = magnitude.sum(dim=1)
    # A float 0/1 mask: torch's comparisons into bool tensors run ~10x slower on CPU, and the
    # products and sums are the same values as with a bool mask. Block counts (< 2^24) are exact.
    below = torch.lt(magnitude, low[:, None], out=scratch.get("below", tuple(magnitude.shape), magnitude.dtype))
    exact = magnitude.dtype if magnitude.shape[1] < 1 << 24 else torch.float64
    below_count = below.sum(dim=1, dtype=exact).to(torch.int64)
    below_mass = below.mul_(magnitude).sum(dim=1)
    return _Partial(flat.shape[1], total, below_count, below_mass, _inside(magnitude, low, high, scratch))


BlockMap = Callable[[Callable[[Tensor], Any], int], Iterable[Any]]
"""`map_blocks(fn, stride)`: `fn` applied to every block of `stream(stride)`, results in stream
order; `fn` may run on other threads, each call with its own block (the streams of `TaskVectors`:
`map_chunks`, which also spreads the per-task selections over its workers via `map_tasks`)."""


def _window_select(
    stream: Stream, num_tasks: int, numel: int, k: int, dtype: torch.dtype, map_blocks: BlockMap | None = None
) -> tuple[list[Tensor], list[float]] | None:
    """Sample-bracketed exact selection in one full pass; None when the bracket missed. With
    `map_blocks`, the full pass's per-block work runs where it places it (worker threads), and
    the results are the same bits as without."""
    low, high, cap = _bracket(stream, num_tasks, numel, k, dtype, map_blocks)
    below_count = torch.zeros(num_tasks, dtype=torch.int64)
    below_mass = torch.zeros(num_tasks, dtype=torch.float64)
    total_mass = torch.zeros(num_tasks, dtype=torch.float64)
    inside = [_Pages(dtype) for _ in range(num_tasks)]
    inside_count = [0] * num_tasks
    seen = 0
    if map_blocks is None:
        scratch = _Scratch()
        parts = (_window_partial(values, num_tasks, low, high, dtype, scratch) for values in stream(1))
    else:
        local = threading.local()

        def work(values: Tensor) -> _Partial:
            if not hasattr(local, "scratch"):
                local.scratch = _Scratch()
            return _window_partial(values, num_tasks, low, high, dtype, local.scratch)

        parts = map_blocks(work, 1)
    for part in parts:
        seen += part.numel
        total_mass += part.total
        below_count += part.below_count
        below_mass += part.below_mass
        for t, values in enumerate(part.inside):
            if inside_count[t] <= cap:
                inside_count[t] += inside[t].add(values)
    if seen != numel:
        raise ValueError(f"the stream yielded {seen} scalars per task, expected numel={numel}")

    ranks = [k - int(below_count[t]) for t in range(num_tasks)]
    if any(inside_count[t] > cap or not 0 < ranks[t] <= inside_count[t] for t in range(num_tasks)):
        return None  # the bracket missed the k-th value (or was too crowded): radix fallback

    def select(t: int) -> tuple[Tensor, float]:
        candidates = inside[t].values()
        inside[t] = None  # its pages: the candidates are in one tensor now (22M per task at 1.26B)
        kth = kth_smallest(candidates, ranks[t])
        # The mass below, a chunk at a time: a mask and a copy of the candidates below would hold
        # another 1.25x the candidates.
        removed = below_mass[t] + sum(
            (chunk[chunk < kth].sum(dtype=torch.float64) for chunk in candidates.split(_COLUMN_CHUNK)),
            torch.zeros((), dtype=torch.float64),
        )
        return kth.clone(), float(removed / total_mass[t]) if total_mass[t] > 0 else 0.0

    # Tasks are independent: spread over the stream's workers when it has them.
    spread = getattr(map_blocks, "map_tasks", None) or (lambda fn, tasks: [fn(t) for t in tasks])
    selected = list(spread(select, range(num_tasks)))
    return [kth for kth, _ in selected], [ratio for _, ratio in selected]

