"""Pure tensor steps shared by the merge methods: magnitude trim, sign election, disjoint mean.

Every function takes the per-task values stacked on dim 0 (`x` of shape `(T, ...)`) and never
looks at parameter names, so TIES, DARE-TIES and NeuroMerging compose the same implementation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from neuroflow.merging import kernels


def scale_(x: Tensor, scaling: float) -> Tensor:
    """`x * scaling`, in place; no pass over `x` when `scaling` is 1 (TIES' default), where the
    product would be `x` itself bit for bit.

    Args:
        x: a merged task vector the caller owns.
        scaling: the coefficient.
    """
    return x if scaling == 1.0 else x.mul_(scaling)


def kth_index(numel: int, mask_rate: float) -> int:
    """The 1-based rank `k = floor(numel * mask_rate)` of the magnitude threshold (0: keep all).

    Args:
        numel: number of scalars the threshold is taken over.
        mask_rate: fraction of entries dropped by magnitude, in [0, 1].
    """
    # Evaluated in float like the reference (`int(P * r)`), so both pick the same k.
    return min(numel, max(0, math.floor(numel * mask_rate)))


def _limits(thresholds: list[Tensor | float | None], x: Tensor) -> Tensor:
    """The per-task thresholds as a `(T, 1, ...)` tensor broadcasting over `x`, in a dtype that
    compares them exactly (a threshold from a wider dtype is not rounded to `x`'s)."""
    limits = torch.stack([torch.as_tensor(t) for t in thresholds])
    return limits.to(torch.promote_types(limits.dtype, x.dtype)).reshape(-1, *([1] * (x.dim() - 1)))


def trim_tasks_(x: Tensor, thresholds: list[Tensor | float | None]) -> Tensor:
    """Zero, in place, every entry of task row t with `|x| < thresholds[t]`; entries equal to the
    threshold are kept (ties kept). Returns `x`.

    Args:
        x: per-task values, shape `(T, ...)`, finite; modified in place.
        thresholds: one threshold per task (None keeps that task whole).
    """
    if len(thresholds) != x.shape[0]:
        raise ValueError(f"got {len(thresholds)} thresholds for {x.shape[0]} tasks")
    if all(t is None for t in thresholds):
        return x
    if any(t is None for t in thresholds):
        for row, threshold in zip(x, thresholds):
            if threshold is not None:
                trim_tasks_(row[None], [threshold])
        return x
    return _trim_by_limits_(x, _limits(thresholds, x))


def _trim_by_limits_(x: Tensor, limits: Tensor) -> Tensor:
    magnitude = x.abs()
    if limits.dtype != x.dtype:
        magnitude = magnitude.to(limits.dtype)
    # Multiplying by the keep mask is about twice as fast as masked_fill_ (inputs are finite), and
    # a float 0/1 mask written in place is 4x faster than a bool one (bool stores do not vectorize).
    return x.mul_(magnitude.ge_(limits))


def tensor_threshold(x: Tensor, mask_rate: float) -> Tensor | None:
    """The k-th smallest `|x|` of one tensor, `k = floor(numel * mask_rate)` (None when k = 0).

    Args:
        x: values of one task (any shape).
        mask_rate: fraction of entries dropped by magnitude, in [0, 1].
    """
    k = kth_index(x.numel(), mask_rate)
    if k == 0:
        return None
    return x.detach().reshape(-1).abs().kthvalue(k).values


def elect_signs(x: Tensor, group_dim: int | None = None) -> Tensor:
    """Elected sign per coordinate: the sign of the summed mass over tasks, with the tie fallback.

    Where `sum_t x_t[j] == 0` the sign is the sign of the sum of elected signs over the
    coordinate's group; where that is 0 too the sign stays 0 (the disjoint mean then keeps only
    negative entries, as the reference's `torch.where` does).

    Args:
        x: per-task values, shape `(T, ...)`.
        group_dim: dimension of `x` (>= 1) spanning a tie-fallback group (e.g. the components of one
            neuron); None makes all coordinates one group (a whole tensor).
    """
    if group_dim is not None and group_dim < 1:
        raise ValueError(f"group_dim must index a non-task dimension (>= 1), got {group_dim}")
    return signs_from_sums(x.sum(dim=0), None if group_dim is None else group_dim - 1)


def signs_from_sums(total: Tensor, group_dim: int | None = None) -> Tensor:
    """`elect_signs` from the per-coordinate sums over tasks (`total = x.sum(0)`).

    Args:
        total: summed task values per coordinate, shape `x.shape[1:]`.
        group_dim: dimension of `total` spanning a tie-fallback group; None: the whole tensor.
    """
    sign = torch.sign(total)
    fallback = torch.sign(sign.sum() if group_dim is None else sign.sum(dim=group_dim, keepdim=True))
    return _fill_ties_(sign, fallback)


def _fill_ties_(sign: Tensor, fallback: Tensor) -> Tensor:
    """`sign` with its zeros replaced, in place, by `fallback` (broadcast)."""
    # sign + fallback * (1 - |sign|): the fallback exactly where sign is 0 (values are -1, 0, 1;
    # float arithmetic instead of a where, which is several times slower on CPU).
    return sign.add_(fallback * (1 - sign.abs()))


def disjoint_mean(x: Tensor, sign: Tensor) -> Tensor:
    """Mean over tasks of the entries whose sign equals the elected sign (zeros never count).

    Args:
        x: per-task values, shape `(T, ...)`.
        sign: elected signs, shape `x.shape[1:]` (from `elect_signs`).
    """
    # A sign of 0 keeps the negative entries, as the reference's `torch.where(sign > 0, x > 0,
    # x < 0)` does. With s = +-1, the agreeing entries are those with x * s > 0: their magnitudes
    # are (x * s) clamped at 0, and their signed sum is s times the sum of those (negation is exact),
    # so the result equals the masked mean without any bool mask (several times faster).
    return _disjoint_mean(x, sign)[0]


def _disjoint_mean(x: Tensor, sign: Tensor) -> tuple[Tensor, Tensor]:
    """`disjoint_mean` and the number of agreeing entries per coordinate (before the clamp at 1)."""
    s = torch.sub(sign, 0.5, out=torch.empty(sign.shape, dtype=x.dtype)).sign_()  # -1, 0 -> -1; 1 -> 1
    agreeing = torch.mul(x, s)
    agreeing.clamp_(min=0)
    total = agreeing.sum(dim=0).mul_(s)
    count = agreeing.sign_().sum(dim=0)
    return total.div_(count.clamp(min=1)), count


# Columns per block of the blocked merge: T x 65536 float32 values and their few temporaries stay
# in a core's L2 cache (1 MiB here), where the element-wise steps run several times faster than on
# whole tensors (whose temporaries, T x numel each, would also have to be faulted in). On a
# (4, 2816, 1024) TIES merge: 2^12 columns 37.9 ms, 2^14 22.3, 2^16 19.3, 2^17 19.2 (per-op overhead
# against cache misses). Block boundaries do not change any value (sums run over tasks).
_BLOCK_COLUMNS = 1 << 16


@dataclass
class TieFallback:
    """The tensor-wide tie fallback of a tensor merged one row block at a time.

    The fallback (the sign of the summed elected signs over the whole tensor) is only known once
    every block is seen, yet it only changes the result in *ambiguous* columns: summed mass exactly
    0 with non-zero entries (an all-zero column merges to 0 whatever its sign). So a first pass
    merges each block assuming a fallback (`guess`: +1, or the sign of the blocks before it),
    accumulates the signs and flags blocks that had ambiguous columns; only those whose guess the
    whole tensor's fallback overturns are merged again.

    Attributes:
        value: the known fallback (a second pass), or None (first pass: `guess` assumed).
        guess: the fallback a first pass assumes, +1 or -1 (0 would hide ambiguous columns: no
            non-zero entry agrees with sign 0).
        sign_sum: sum of the elected signs seen so far (first pass).
        assumed: the last block merged had ambiguous columns, so its result assumed `guess`.
        positions: those columns' flat indices in the block (int64, ascending), when the method
            reports them (`ties_merge` does): only these entries change under another fallback,
            so they alone need merging again.
    """

    value: float | None = None
    guess: float = 1.0
    sign_sum: int = 0
    assumed: bool = False
    positions: Tensor | None = None

    def __post_init__(self) -> None:
        if self.guess not in (1.0, -1.0):
            raise ValueError(f"TieFallback.guess must be +1 or -1, got {self.guess!r}")

    @property
    def fallback(self) -> float:
        """The fallback the whole tensor has, from the signs summed over every block."""
        return float((self.sign_sum > 0) - (self.sign_sum < 0))


def ties_merge(
    x: Tensor,
    group_dim: int | None = None,
    thresholds: list[Tensor | float | None] | None = None,
    tie: TieFallback | None = None,
) -> Tensor:
    """Trim (when `thresholds` are given, in place), elect signs, then take the disjoint mean.

    With one tie-fallback group per tensor (`group_dim=None`) the steps run over blocks of
    columns in two sweeps (trim and sum; disjoint mean with the elected signs), which gives the
    same values as the whole-tensor steps (every step is column-wise but the fallback, which the
    first sweep's sums decide) at a fraction of the memory traffic.

    Args:
        x: per-task values, shape `(T, ...)`; may be trimmed in place when `thresholds` are given
            (its contents are unspecified afterwards).
        group_dim: tie-fallback group dimension, see `elect_signs`.
        thresholds: per-task magnitude thresholds for `trim_tasks_` (None: no trim).
        tie: `x` is one row block of a larger tensor whose fallback `tie` tracks (see
            `TieFallback`); None: `x` is the whole tensor.
    """
    if group_dim is not None or x.dim() < 2 or not x.is_contiguous():
        if thresholds is not None:
            trim_tasks_(x, thresholds)
        if group_dim is not None or x.dim() < 2:
            return disjoint_mean(x, elect_signs(x, group_dim))
        x, thresholds = x.contiguous(), None  # trimmed already
    if thresholds is not None and len(thresholds) != x.shape[0]:
        raise ValueError(f"got {len(thresholds)} thresholds for {x.shape[0]} tasks")
    flat = x.reshape(x.shape[0], -1)
    compiled = _compiled_ties(flat, thresholds, tie)
    if compiled is not None:
        return compiled.reshape(x.shape[1:])
    total = torch.empty(flat.shape[1], dtype=x.dtype)
    trim = thresholds is not None and any(t is not None for t in thresholds)
    partial = trim and any(t is None for t in thresholds)
    limits = _limits(thresholds, flat) if trim and not partial else None
    # Each intra-op thread gets about one cache-sized share of a block (and less sync per op).
    columns = _BLOCK_COLUMNS * max(1, torch.get_num_threads())
    blocks = [slice(start, start + columns) for start in range(0, flat.shape[1], columns)]
    for block in blocks:
        part = flat[:, block]
        if partial:
            trim_tasks_(part, thresholds)
        elif limits is not None:
            _trim_by_limits_(part, limits)
        torch.sum(part, dim=0, out=total[block])
    # The tensor-wide fallback first; each block's signs then come from its own sums, so no
    # tensor-sized sign temporaries are held (the same values as `signs_from_sums(total)`).
    signs_sum = torch.sign(total).sum()
    if tie is None:
        fallback = torch.sign(signs_sum)
    elif tie.value is not None:
        fallback = torch.tensor(tie.value, dtype=x.dtype)
    else:
        tie.sign_sum += int(signs_sum)
        tie.assumed = False
        fallback = torch.tensor(tie.guess, dtype=x.dtype)
    out = total  # each block's sums are read before its means overwrite them
    first_pass = tie is not None and tie.value is None
    found = []
    for block in blocks:
        zero = total[block] == 0 if first_pass else None
        out[block], count = _disjoint_mean(flat[:, block], _fill_ties_(torch.sign(total[block]), fallback))
        if zero is not None:
            # Ambiguous: summed mass 0 but some entry non-zero, hence one of each sign, one of
            # which the guess counted (an all-zero column merges to 0 under any sign).
            found.append((zero & (count > 0)).nonzero().reshape(-1) + block.start)
    if first_pass:
        tie.positions = torch.cat(found) if found else torch.empty(0, dtype=torch.int64)  # no columns
        tie.assumed = bool(tie.positions.numel())
    return out.reshape(x.shape[1:])


def _compiled_ties(flat: Tensor, thresholds: list[Tensor | float | None] | None, tie: TieFallback | None) -> Tensor | None:
    """`ties_merge`'s blocked path through `kernels.ties_columns` (same values, one pass per
    sweep), keeping `tie` as the torch path does; None when the kernel does not apply."""
    limits = None
    if thresholds is not None and any(t is not None for t in thresholds):
        limits = kernels.threshold_limits(thresholds)
    first_pass = tie is not None and tie.value is None
    fallback = None if tie is None else (tie.guess if first_pass else tie.value)
    done = kernels.ties_columns(flat, limits, fallback, positions=first_pass)
    if done is None:
        return None
    if first_pass:
        tie.sign_sum += done.sign_sum
        tie.assumed, tie.positions = done.ambiguous, done.positions
    return done.merged
