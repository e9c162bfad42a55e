"""The numba loops behind `kernels.py` (imported only when numba is installed).

Module-level functions, so numba caches their machine code next to this file (`cache=True`): a
fresh process then loads them in milliseconds instead of compiling them for a second or more.
"""

from __future__ import annotations

import functools

import numba
import numpy as np

# Columns per block of the TIES sweeps: T rows of this many floats stay in L1 while they are summed.
COLUMNS = 2048
# Lanes of the window select's vectorized sums, and chunks summed in float32 before float64.
_LANES, _FLUSH = 1024, 64

# Serial, GIL-free loops: `kernels._run` splits the work over threads itself (numba's own pools
# either spin between calls, burning the other core's time, or refuse launches from two threads).
_jit = functools.partial(numba.njit, cache=True, nogil=True)
_inline = functools.partial(numba.njit, cache=True, nogil=True, inline="always")


# The loops are written so that LLVM vectorizes them: no stores under a branch, bool masks
# multiplied in (a select or a product, never an `if` around an update).
@_inline
def add_kept(row, limit, out):
    for j in range(out.shape[0]):
        v = row[j]
        out[j] += v * (abs(v) >= limit)


@_jit
def ties_totals(x, limits, out, start, stop):
    """`out[j]` = sum over tasks, in order, of the kept `x[t, j]` for columns in `[start, stop)`;
    returns the sum of their signs."""
    sign_sum = 0
    for first in range(start, stop, COLUMNS):
        last = min(stop, first + COLUMNS)
        total = out[first:last]
        total[:] = 0
        for t in range(x.shape[0]):
            add_kept(x[t, first:last], limits[t], total)
        for j in range(total.shape[0]):
            sign_sum += (total[j] > 0) - (total[j] < 0)
    return sign_sum


@_inline
def add_agreeing(row, limit, sign, mass, count):
    for j in range(sign.shape[0]):
        v = row[j]
        a = v * sign[j]
        keep = (abs(v) >= limit) & (a > 0)
        mass[j] += a * keep
        count[j] += keep


@_jit
def ties_means(x, limits, out, fallback, start, stop):
    """Overwrite the sums in `out[start:stop]` with the disjoint means under the elected signs;
    returns whether a column was decided by the fallback (sum 0, an entry kept)."""
    sign = np.empty(COLUMNS, x.dtype)
    mass = np.empty(COLUMNS, x.dtype)
    count = np.empty(COLUMNS, x.dtype)
    ambiguous = False
    for first in range(start, stop, COLUMNS):
        last = min(stop, first + COLUMNS)
        width = last - first
        total, s, m, c = out[first:last], sign[:width], mass[:width], count[:width]
        for j in range(width):
            elected = fallback if total[j] == 0 else (1.0 if total[j] > 0 else -1.0)
            s[j] = 1.0 if elected > 0 else -1.0  # a fallback of 0 keeps the negative entries
            m[j] = 0
            c[j] = 0
        for t in range(x.shape[0]):
            add_agreeing(x[t, first:last], limits[t], s, m, c)
        for j in range(width):
            ambiguous |= (total[j] == 0) & (c[j] > 0)
            total[j] = m[j] * s[j] / max(c[j], 1)
    return ambiguous


@_jit
def window_row(row, lo, hi, inside):
    """`(L1 mass, count below lo, mass below lo, count inside [lo, hi])` of `|row|`, the inside
    magnitudes written to `inside[:count]` in order."""
    # Per-lane float32 sums over at most _FLUSH chunks (vectorized), then float64: sigma is
    # exact to ~1e-9 relative, not bit-equal to the torch path's float32 block sums.
    lanes, under_lanes, under_mass_lanes = np.zeros(_LANES, row.dtype), np.zeros(_LANES, row.dtype), np.zeros(_LANES, row.dtype)
    mass, under, under_mass, kept, chunks = 0.0, 0, 0.0, 0, 0
    for start in range(0, row.shape[0], _LANES):
        part = row[start : start + _LANES]
        if part.shape[0] == _LANES:
            for j in range(_LANES):
                a = abs(part[j])
                below = a < lo
                lanes[j] += a
                under_lanes[j] += below
                under_mass_lanes[j] += a * below
            chunks += 1
        else:
            for j in range(part.shape[0]):
                a = abs(part[j])
                below = a < lo
                mass += a
                under += below
                under_mass += a * below
        if chunks == _FLUSH or start + _LANES >= row.shape[0]:
            for j in range(_LANES):
                mass += lanes[j]
                under += int(under_lanes[j])
                under_mass += under_mass_lanes[j]
            lanes[:], under_lanes[:], under_mass_lanes[:] = 0, 0, 0
            chunks = 0
        # Branch-free compaction: always store, advance past the entries inside the bracket
        # (a branch on a random comparison costs 5x more here).
        for j in range(part.shape[0]):
            a = abs(part[j])
            inside[kept] = a
            kept += (a >= lo) & (a <= hi)
    return mass, under, under_mass, kept


@_jit
def window_rows(values, low, high, total, below_count, below_mass, inside, inside_count, first, last):
    """`window_row` for task rows `[first, last)`, accumulated into the per-task sums."""
    for t in range(first, last):
        mass, under, under_mass, kept = window_row(values[t], low[t], high[t], inside[t])
        total[t] += mass
        below_count[t] += under
        below_mass[t] += under_mass
        inside_count[t] = kept
