"""The numba loops behind `kernels.py` (imported only when numba is installed).

Module-level functions, so numba caches their machine code next to this file (`cache=True`): a
fresh process then loads them in milliseconds instead of compiling them for a second or more.
"""

from __future__ import annotations

import functools

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

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


@intrinsic
def widen_bf16(typingctx, bits):
    """The float32 a bfloat16 bit pattern (uint16) stands for: its bits shifted into the high
    half (exact, like torch's upcast), as one vectorizable shift and a bit cast."""
    signature = types.float32(types.uint16)

    def codegen(context, builder, sig, args):
        wide = builder.zext(args[0], ir.IntType(32))
        return builder.bitcast(builder.shl(wide, ir.Constant(ir.IntType(32), 16)), ir.FloatType())

    return signature, codegen


_F32_MAX = np.float32(np.finfo(np.float32).max)


@_jit
def bf16_difference(stored, base, out):
    """`out = float32(stored) - float32(base)` for bfloat16 bit patterns, rounded once in float32
    (torch's `out.copy_(stored).sub_(base.float())`); returns whether every difference is finite.
    One pass writing `out` instead of a cast pass and a subtraction pass over it, and the finiteness
    check rides along (an and-reduction that vectorizes; NaN fails the comparison)."""
    ok = 1
    for j in range(out.shape[0]):
        v = widen_bf16(stored[j]) - widen_bf16(base[j])
        out[j] = v
        ok &= abs(v) <= _F32_MAX
    return ok == 1


@_inline
def add_agreeing(row, limit, sign, mass, count):
    for j in range(sign.shape[0]):
        v = row[j]
        a = v * sign[j]
        keep = (abs(v) >= limit) & (a > 0)
        mass[j] += a * keep
        count[j] += keep


@_jit
def ties_sweep(x, limits, out, fallback, where, start, stop):
    """TIES over the columns `[start, stop)` into `out`: per block of columns, the kept values
    summed over tasks in order, the signs elected (`fallback` where a sum is 0), the disjoint
    means; returns `(sum of the sums' signs, number of columns the fallback decided (sum 0, an
    entry kept), start)`. When `where` is not empty, those columns' indices are written, in
    order, to `where[start:start + number]`. Both sweeps of a block run while its T x COLUMNS
    values are in cache."""
    sign = np.empty(COLUMNS, x.dtype)
    mass = np.empty(COLUMNS, x.dtype)
    count = np.empty(COLUMNS, x.dtype)
    flags = np.zeros(COLUMNS, np.uint8)
    words = flags.view(np.uint64)
    found = 0
    sign_sum = 0
    for first in range(start, stop, COLUMNS):
        last = min(stop, first + COLUMNS)
        width = last - first
        total, s, m, c = out[first:last], sign[:width], mass[:width], count[:width]
        total[:] = 0
        for t in range(x.shape[0]):
            add_kept(x[t, first:last], limits[t], total)
        for j in range(width):
            sign_sum += (total[j] > 0) - (total[j] < 0)
            elected = fallback if total[j] == 0 else (1.0 if total[j] > 0 else -1.0)
            s[j] = 1.0 if elected > 0 else -1.0  # a fallback of 0 keeps the negative entries
            m[j] = 0
            c[j] = 0
        for t in range(x.shape[0]):
            add_agreeing(x[t, first:last], limits[t], s, m, c)
        here = 0
        for j in range(width):
            flag = (total[j] == 0) & (c[j] > 0)
            flags[j] = flag
            here += flag
        if here and where.shape[0]:
            # Branch-free compaction over the 8-flag words that hold one (ambiguous columns are
            # ~1% of bfloat16 task values, so most words hold none).
            for w in range(-(-width // 8)):
                if words[w]:  # the last word's flags past `width` are stale: not read below
                    for j in range(8 * w, min(8 * w + 8, width)):
                        where[start + found] = first + j
                        found += flags[j]
        elif here:
            found += here
        for j in range(width):
            total[j] = m[j] * s[j] / max(c[j], 1)
    return sign_sum, found, start


@_jit
def window_row(row, lo, hi, inside):
    """`(L1 mass, count below lo, mass below lo, count inside [lo, hi])` of `|row|`, the inside
    magnitudes written to `inside[:count]` in order."""
    # Per-lane float32 sums over at most _FLUSH chunks (vectorized), then float64: sigma is
    # exact to ~1e-9 relative, not bit-equal to the torch path's float32 block sums.
    lanes, under_lanes, under_mass_lanes = np.zeros(_LANES, row.dtype), np.zeros(_LANES, row.dtype), np.zeros(_LANES, row.dtype)
    # One flag byte per lane, read back 8 at a time: the bracket holds ~2% of the entries, so
    # most 8-entry groups hold none and skip the compaction, whose stores cannot be vectorized
    # (the pass took 1.0 ns an entry with it run on every entry, 0.55-0.65 with the skip).
    flags = np.zeros(_LANES, np.uint8)
    words = flags.view(np.uint64)
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
                flags[j] = (a >= lo) & (a <= hi)
            chunks += 1
            for w in range(_LANES // 8):
                if words[w]:
                    # Branch-free compaction: always store, advance past the entries inside the
                    # bracket (a branch on a random comparison costs 5x more here).
                    for j in range(8 * w, 8 * w + 8):
                        a = abs(part[j])
                        inside[kept] = a
                        kept += (a >= lo) & (a <= hi)
        else:  # the row's last, partial chunk
            for j in range(part.shape[0]):
                a = abs(part[j])
                below = a < lo
                mass += a
                under += below
                under_mass += a * below
                inside[kept] = a
                kept += (a >= lo) & (a <= hi)
        if chunks == _FLUSH or start + _LANES >= row.shape[0]:
            for j in range(_LANES):
                mass += lanes[j]
                under += int(under_lanes[j])
                under_mass += under_mass_lanes[j]
            lanes[:], under_lanes[:], under_mass_lanes[:] = 0, 0, 0
            chunks = 0
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


# Reassociation lets LLVM vectorize the float64 sums (the Gram entries); the neuron merge's
# values then differ from the torch path's (another summation order) by float64 rounding only.
@numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def dot(a, b):
    total = 0.0
    for j in range(a.shape[0]):
        total += a[j] * b[j]
    return total


@_jit
def jacobi_eigh(a, values, vectors):
    """Eigen-decomposition of the small symmetric matrix `a` (destroyed) by cyclic Jacobi
    rotations: `values[j]`, eigenvector `vectors[:, j]` (unordered). Jacobi is accurate to
    round-off relative to `||a||` like LAPACK's, and a batch of 4x4 problems needs no library call
    per neuron."""
    size = a.shape[0]
    vectors[:, :] = 0.0
    for i in range(size):
        vectors[i, i] = 1.0
    for sweep in range(64):
        off, scale = 0.0, 0.0
        for p in range(size):
            for q in range(size):
                scale += a[p, q] * a[p, q]
                if p != q:
                    off += a[p, q] * a[p, q]
        # Off-diagonal mass at float64 round-off of ||a||: the eigenvalues are then as accurate
        # as a LAPACK solver's (their error is bounded by the off-diagonal norm).
        if off <= 1e-31 * scale:
            break
        for p in range(size - 1):
            for q in range(p + 1, size):
                apq = a[p, q]
                big = 100.0 * abs(apq)
                if apq == 0.0 or (sweep > 3 and abs(a[p, p]) + big == abs(a[p, p]) and abs(a[q, q]) + big == abs(a[q, q])):
                    a[p, q] = a[q, p] = 0.0  # negligible next to both diagonal entries
                    continue
                theta = (a[q, q] - a[p, p]) / (2.0 * apq)
                if abs(theta) > 1e150:
                    t = 0.5 / theta
                else:
                    t = (1.0 if theta >= 0 else -1.0) / (abs(theta) + np.sqrt(theta * theta + 1.0))
                c = 1.0 / np.sqrt(t * t + 1.0)
                s = t * c
                for k in range(size):
                    akp, akq = a[k, p], a[k, q]
                    a[k, p] = c * akp - s * akq
                    a[k, q] = s * akp + c * akq
                for k in range(size):
                    apk, aqk = a[p, k], a[q, k]
                    a[p, k] = c * apk - s * aqk
                    a[q, k] = s * apk + c * aqk
                a[p, q] = a[q, p] = 0.0  # what the rotation makes it, without round-off
                for k in range(size):
                    vkp, vkq = vectors[k, p], vectors[k, q]
                    vectors[k, p] = c * vkp - s * vkq
                    vectors[k, q] = s * vkp + c * vkq
    for i in range(size):
        values[i] = a[i, i]


@_jit
def neuron_rows(x, w0, limits, rtol, s_out, psi_out, start, stop):
    """NeuroMerging's orthogonal merge (`neuromerging.merge_orthogonal` after `trim_tasks_`) for
    neurons `[start, stop)`: `x` is `(T, R, n)` untrimmed task rows, `w0` `(R, n)`; writes the
    projection coefficients `s_out[:, r]` and `psi_out[r]`. One neuron at a time, its trimmed rows
    and `w0` held in float64 in cache: the Gram matrix, its eigenvectors, the disjoint mean of
    their coordinates and `psi` never leave it."""
    tasks, width = x.shape[0], x.shape[2]
    z = np.empty((tasks + 1, width), np.float64)
    gram = np.empty((tasks + 1, tasks + 1), np.float64)
    a = np.empty((tasks, tasks), np.float64)
    values = np.empty(tasks, np.float64)
    u = np.empty((tasks, tasks), np.float64)
    s = np.empty(tasks, np.float64)
    m = np.empty(tasks, np.float64)
    live = np.empty(tasks, np.float64)
    weights = np.empty(tasks, np.float64)
    psi = np.empty(width, np.float64)
    for r in range(start, stop):
        for t in range(tasks):
            row, limit = x[t, r], limits[t]
            for j in range(width):
                v = row[j]
                z[t, j] = v * (abs(v) >= limit)
        for j in range(width):
            z[tasks, j] = w0[r, j]
        for p in range(tasks + 1):
            for q in range(p, tasks + 1):
                gram[p, q] = gram[q, p] = dot(z[p], z[q])
        q0 = gram[tasks, tasks]
        for t in range(tasks):
            s[t] = gram[t, tasks] / q0 if q0 > 0 else 0.0
            live[t] = gram[t, t] > 0  # a zero task row has no coordinates to elect with
        for t in range(tasks):
            for p in range(tasks):
                a[t, p] = gram[t, p] - q0 * s[t] * s[p]
        jacobi_eigh(a, values, u)
        cut = rtol * tasks * max(values.max(), 0.0)
        # The disjoint mean of each component's coordinates, the tie fallback per neuron.
        sign_sum = 0.0
        for j in range(tasks):
            total = 0.0
            if values[j] > cut:
                for t in range(tasks):
                    total += u[t, j] * live[t]
            m[j] = (total > 0) - (total < 0)
            sign_sum += m[j]
        fallback = (sign_sum > 0) - (sign_sum < 0)
        for j in range(tasks):
            elected = m[j] if m[j] != 0 else fallback
            sign = 1.0 if elected > 0 else -1.0  # a fallback of 0 keeps the negative entries
            mass, count = 0.0, 0
            if values[j] > cut:
                for t in range(tasks):
                    agreeing = u[t, j] * live[t] * sign
                    if agreeing > 0:
                        mass += agreeing
                        count += 1
            m[j] = sign * mass / max(count, 1)
        # psi = sum_t weights_t x_t - (s . weights) w0, weights = U m.
        shift = 0.0
        for t in range(tasks):
            weights[t] = 0.0
            for j in range(tasks):
                weights[t] += u[t, j] * m[j]
            shift -= s[t] * weights[t]
            s_out[t, r] = s[t]
        for j in range(width):
            psi[j] = shift * z[tasks, j]
        for t in range(tasks):
            weight = weights[t]
            for j in range(width):
                psi[j] += weight * z[t, j]
        for j in range(width):
            psi_out[r, j] = psi[j]
