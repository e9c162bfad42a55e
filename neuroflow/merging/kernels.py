"""Compiled CPU loops for the two hot spots of a streamed merge, when numba is installed.

The torch steps in `steps.py` and `select.py` are the definition; these kernels compute the same
values in one pass over memory instead of one pass per element-wise op (a TIES merge is ~12 ops,
each reading and writing `T x numel` floats). Only CPU tensors in float32/float64 take them:

- `ties_columns`: trim by per-task limits, elect signs, disjoint mean, for one tensor (or row
  block) with a tensor-wide tie fallback. The arithmetic is the torch path's, tasks added in
  order in the tensor's dtype: bit-identical to it (torch regroups its dim-0 sum only for some
  widths with 8 or more tasks, where the two differ by rounding).
- `window_block`: one block of the window select's full pass: per-task L1 mass, count and mass
  below the bracket, and the entries inside it. Masses are summed in float32 lanes flushed to
  float64, so `sigma` may differ from the torch path's (float32 block sums) by float32 rounding;
  the thresholds and counts are exact either way.

- `difference_into`: one expert's task vector `float32(stored) - float32(base)` from bfloat16
  tensors in one pass, with its finiteness check (torch casts, then subtracts, then sums to check).

`NEUROFLOW_KERNELS=0` turns them off (the torch path is used); without numba they are off.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

logger = logging.getLogger(__name__)

# Below this many values per call the kernels run on the calling thread only.
_SPLIT_MIN = 1 << 18


@functools.cache
def _compiled():
    """The loops module, or None (numba missing, or `NEUROFLOW_KERNELS=0`)."""
    if os.environ.get("NEUROFLOW_KERNELS", "1") == "0":
        return None
    try:
        import numba  # noqa: F401
    except ImportError:
        return None
    try:
        from neuroflow.merging import numba_loops
    except Exception as error:  # e.g. no writable place for numba's cache: the torch steps still work
        logger.warning("neuroflow: compiled merge kernels unavailable (%s); using the torch steps", error)
        return None
    return numba_loops


_POOL: ThreadPoolExecutor | None = None
# Threads the kernels split their work over (None: torch's intra-op setting), set by the merge.
_THREADS: int | None = None


@contextlib.contextmanager
def threads(count: int | None) -> Iterator[None]:
    """Use `count` threads for the kernels inside the block (None: torch's current setting, read
    now: a helper thread that changes torch's setting later does not change the kernels').

    Args:
        count: threads (>= 1), or None.
    """
    global _THREADS
    before = _THREADS
    _THREADS = torch.get_num_threads() if count is None else count
    try:
        yield
    finally:
        _THREADS = before


def _run(kernel, args: tuple, size: int, work: int, align: int = 1) -> list:
    """`kernel(*args, start, stop)` over `[0, size)`, split into up to `threads()` (else torch's
    intra-op setting) ranges (multiples of `align`) that run concurrently, the kernels releasing the GIL; returns
    each range's result. `work` (scalars touched) keeps small calls on this thread."""
    global _POOL
    threads = max(1, min(_THREADS or torch.get_num_threads(), -(-size // align), work // _SPLIT_MIN))
    if threads == 1:
        return [kernel(*args, 0, size)]
    if _POOL is None or _POOL._max_workers < threads:
        _POOL = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="neuroflow-kernel")
    bounds = [min(size, -(-(size * i // threads) // align) * align) for i in range(threads + 1)]
    futures = [_POOL.submit(kernel, *args, a, b) for a, b in zip(bounds, bounds[1:]) if b > a]
    return [f.result() for f in futures]


def enabled() -> bool:
    """Whether the compiled kernels are in use (numba importable and not turned off)."""
    return _compiled() is not None


def _fits(x: Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and x.is_contiguous() and not x.requires_grad


def _limits_in(dtype: np.dtype, limits: Tensor | None, tasks: int) -> np.ndarray:
    """Per-task limits in `dtype`, rounded up: for values of `dtype`, `|v| >= up(l)` exactly when
    `|v| >= l` (a float64 threshold need not be a float32)."""
    if limits is None:
        return np.zeros(tasks, dtype)
    wide = limits.detach().reshape(-1).to(torch.float64).numpy()
    narrow = wide.astype(dtype)
    return np.where(narrow < wide, np.nextafter(narrow, dtype.type(np.inf)), narrow)


def threshold_limits(thresholds: list[Tensor | float | None]) -> Tensor:
    """Per-task magnitude thresholds as a float64 `(T,)` tensor (float64 holds every float32 or
    float64 threshold exactly); a None threshold keeps the whole task (`|x| >= 0`).

    Args:
        thresholds: one threshold per task, or None.
    """
    return torch.tensor([0.0 if t is None else float(t) for t in thresholds], dtype=torch.float64)


class TiesColumns(NamedTuple):
    """`ties_columns`' result.

    Attributes:
        merged: the merged values, `(N,)`.
        sign_sum: the sum of the elected signs (of the columns' summed masses).
        ambiguous: whether a column was decided by the fallback (summed mass 0, an entry kept).
        positions: those columns' indices, int64, ascending, when asked for (else None).
    """

    merged: Tensor
    sign_sum: int
    ambiguous: bool
    positions: Tensor | None


def ties_columns(flat: Tensor, limits: Tensor | None, fallback: float | None, positions: bool = False) -> TiesColumns | None:
    """TIES on `(T, N)` values, or None when the kernels do not apply (the caller runs the torch
    steps).

    The sign fallback of columns whose summed mass is 0 is `fallback`, or, when None, the sign of
    the sum of the elected signs (the whole-tensor rule). Ambiguous columns (mass 0, some entry
    kept) are the ones the fallback decided, see `steps.TieFallback`.

    Args:
        flat: per-task values, contiguous, float32 or float64; not modified.
        limits: per-task magnitude limits `(T,)` (entries with `|x| < limit` are dropped), or None.
        fallback: the tie fallback (-1, 0, 1), or None to derive it from this tensor.
        positions: also return the ambiguous columns' indices (with a given `fallback`).
    """
    kernels = _compiled()
    if kernels is None or not _fits(flat) or flat.dim() != 2:
        return None
    x = flat.numpy()
    bounds = _limits_in(x.dtype, limits, x.shape[0])
    out = np.empty(x.shape[1], x.dtype)
    # Untouched pages of `where` cost nothing: only the ambiguous columns' indices are written.
    where = np.empty(x.shape[1] if positions else 0, np.int64)

    def sweep(tie: float) -> list[tuple[int, int]]:
        return _run(kernels.ties_sweep, (x, bounds, out, tie, where), x.shape[1], x.size, kernels.COLUMNS)

    # One sweep (sums and means block by block, while the block is in cache) under the given
    # fallback, or, when the tensor decides it, under +1: the tensor-wide sign sum is known only
    # at the end, and only if a column was ambiguous and the sum says otherwise is it swept again.
    parts = sweep(1.0 if fallback is None else float(fallback))
    sign_sum, found = sum(p[0] for p in parts), sum(p[1] for p in parts)
    if fallback is None and found and sign_sum <= 0:
        found = sum(p[1] for p in sweep(float((sign_sum > 0) - (sign_sum < 0))))
    index = None
    if positions:  # each range `[start, stop)` wrote its columns from `where[start]` on
        index = torch.from_numpy(np.concatenate([where[start : start + n] for _, n, start in parts]))
    return TiesColumns(torch.from_numpy(out), int(sign_sum), bool(found), index)


def window_block(
    values: Tensor, low: Tensor, high: Tensor, total: Tensor, below_count: Tensor, below_mass: Tensor, inside: Tensor
) -> Tensor | None:
    """Accumulate one `(T, m)` block into the window select's per-task sums (in place) and write
    each task's magnitudes inside `[low, high]` to `inside[t, :count[t]]`; returns the counts, or
    None when the kernels do not apply.

    Args:
        values: task values (signed), contiguous, in the selection dtype.
        low: per-task lower bracket, `(T,)`, the selection dtype.
        high: per-task upper bracket, `(T,)`.
        total: float64 `(T,)`, L1 mass so far.
        below_count: int64 `(T,)`, entries below `low` so far.
        below_mass: float64 `(T,)`, their mass so far.
        inside: contiguous scratch of `values`' shape and dtype.
    """
    kernels = _compiled()
    if kernels is None or not _fits(values) or values.dim() != 2 or low.dtype != values.dtype or not inside.is_contiguous():
        return None
    counts = np.zeros(values.shape[0], np.int64)
    args = (values.numpy(), low.numpy(), high.numpy(), total.numpy(), below_count.numpy(), below_mass.numpy(), inside.numpy(), counts)
    _run(kernels.window_rows, args, values.shape[0], values.numel())  # each task row on one thread
    return torch.from_numpy(counts)


def neuron_merge(w0: Tensor, rows: Tensor, thresholds: list[Tensor | float | None], rtol: float) -> tuple[Tensor, Tensor] | None:
    """NeuroMerging's trim and orthogonal merge of one neuron weight in one pass: `(s (T, R),
    psi_orth (R, n))` in `rows`' dtype, as `merge_orthogonal(w0, trim_tasks_(rows, thresholds))`
    gives them up to float64 rounding (another summation order for the Gram matrix, Jacobi
    eigenvectors instead of LAPACK's); None when the kernels do not apply.

    Args:
        w0: pre-trained rows `(R, n)`, in `rows`' dtype.
        rows: untrimmed task rows `(T, R, n)`, contiguous; not modified.
        thresholds: per-task magnitude thresholds (entries with `|x| < threshold` are dropped;
            None keeps the task whole).
        rtol: Gram eigenvalues at or below `rtol * T * max eigenvalue` are round-off (dropped).
    """
    compiled = _compiled()
    if compiled is None or not _fits(rows) or rows.dim() != 3 or w0.dtype != rows.dtype or w0.shape != rows.shape[1:]:
        return None
    base = w0.detach().contiguous().numpy()
    x = rows.numpy()
    bounds = _limits_in(x.dtype, threshold_limits(thresholds), x.shape[0])
    s = np.empty(x.shape[:2], x.dtype)
    psi = np.empty(x.shape[1:], x.dtype)
    _run(compiled.neuron_rows, (x, base, bounds, float(rtol), s, psi), x.shape[1], x.size)
    return torch.from_numpy(s), torch.from_numpy(psi)


def difference_into(out: Tensor, stored: Tensor, base: Tensor) -> bool | None:
    """Write `stored - base` (both bfloat16, upcast exactly, rounded once in float32) into the
    float32 `out`, on the calling thread; returns whether every value is finite, or None when the
    kernel does not apply (other dtypes, devices or layouts: the caller runs the torch ops).

    Args:
        out: float32 destination of `stored`'s shape, contiguous.
        stored: an expert's bfloat16 tensor (or rows), contiguous; not modified.
        base: the base's bfloat16 tensor of the same shape, contiguous; not modified.
    """
    compiled = _compiled()
    if (
        compiled is None
        or stored.dtype != torch.bfloat16
        or base.dtype != torch.bfloat16
        or out.dtype != torch.float32
        or not (stored.shape == base.shape == out.shape)
        or any(t.device.type != "cpu" or not t.is_contiguous() or t.requires_grad for t in (out, stored, base))
    ):
        return None
    bits = lambda t: t.reshape(-1).view(torch.int16).numpy().view(np.uint16)  # noqa: E731
    return bool(compiled.bf16_difference(bits(stored.detach()), bits(base.detach()), out.reshape(-1).numpy()))
