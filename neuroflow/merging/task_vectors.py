"""Streamed access to the task vectors `tau_t = theta_t - theta_0`, one tensor at a time.

Methods see the experts only through `TaskVectors`: `stack(name)` gives the `(T, *shape)` task
vectors of one tensor, iteration streams every merged tensor once, and `trim_statistics` runs the
exact global magnitude selection over those passes. Every pass computes `tau` with the same code, so
a threshold chosen in the statistics pass is compared against bit-identical values when merging.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch
from torch import Tensor

from neuroflow.merging import kernels
from neuroflow.merging.routing import Route
from neuroflow.merging.prefetch import ahead_stream
from neuroflow.merging.select import TrimStatistics, streamed_trim_statistics
from neuroflow.merging.sources import ExpertSource, as_task_vector, read_rows, read_strided, tensor_meta
from neuroflow.merging.threads import ordered_map
from neuroflow.merging.validation import MergeInputError, all_finite, check_values, non_float_message

T = TypeVar("T")


# Bytes (per task, in the compute dtype) of one row block: a tensor larger than this is read and
# merged a block of rows at a time by methods that allow it, so the working set is (T + 2) x this
# instead of (T + 2) x the largest tensor (an embedding or LM head). Smaller blocks shrink the
# working set, and with it the pages faulted in: 16 MiB beat 32 MiB (1.26B NeuroMerging peak 1.39
# vs 1.50 GiB), and 4 MiB beat 16 MiB (210M TIES: 177k vs 207k page faults, peak 0.46 vs 0.64 GB,
# CPU time within noise); the per-block overhead is still lost in the noise at 4 MiB.
ROW_BLOCK_BYTES = 4 << 20


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every lower precision is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def block_rows(shape: tuple[int, ...], dtype: torch.dtype) -> int | None:
    """Rows per row block of a tensor of this shape and stored dtype, or None when it fits in
    one block (`ROW_BLOCK_BYTES`) or has fewer than two rows.

    Args:
        shape: the tensor's shape.
        dtype: its stored dtype.
    """
    if len(shape) < 1 or shape[0] < 2:
        return None
    row_bytes = math.prod(shape[1:]) * compute_dtype(dtype).itemsize
    if row_bytes * shape[0] <= ROW_BLOCK_BYTES:
        return None
    return max(1, ROW_BLOCK_BYTES // max(1, row_bytes))


class TaskVectors:
    """The task vectors of the merged tensors, read lazily from the base and the experts.

    Args:
        base: the pre-trained weights `theta_0` (any mapping; may be lazy).
        experts: the T experts.
        routing: the route of every tensor of `base`; tensors routed "skip" are not merged (every
            other tensor must be floating-point: `MergeInputError` otherwise).
    """

    # Threads of the statistics passes (`map_chunks`); the streamed engine sets it from `threads`.
    workers: int = 1

    def __init__(self, base: Mapping[str, Tensor], experts: ExpertSource, routing: Mapping[str, Route]) -> None:
        self.base = base
        self.experts = experts
        self.routing = routing
        self.names = [name for name in base if routing[name].kind != "skip"]
        # Shapes and dtypes once, from the header when the base is a lazy file (no tensor reads).
        self._meta = {name: tensor_meta(base, name) for name in self.names}
        for name, (_, dtype) in self._meta.items():
            # A task vector of an integer or bool tensor would be computed in float: refuse it
            # here too, whoever built the routing (the engine routes them "skip").
            if not dtype.is_floating_point:
                raise MergeInputError(non_float_message(name, dtype, routing[name]))
        self._trim_cache: dict[float, TrimStatistics] = {}
        self._custom_task_vector = type(experts).task_vector is not ExpertSource.task_vector
        # Names whose task vectors were seen whole and finite: every input value is checked once,
        # where it is first read (statistics pass or merge), not in an extra pass of its own.
        self._finite: set[str] = set()

    @property
    def num_tasks(self) -> int:
        return len(self.experts)

    def _empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        """Storage for a stack or block (the streamed engine's subclass hands out recycled buffers)."""
        return torch.empty(shape, dtype=dtype)

    @property
    def selection_dtype(self) -> torch.dtype:
        """The dtype magnitudes are ranked in: float64 if any merged tensor is float64."""
        dtypes = {compute_dtype(dtype) for _, dtype in self._meta.values()}
        return torch.float64 if torch.float64 in dtypes else torch.float32

    def stack(self, name: str, base: Tensor | None = None) -> Tensor:
        """The task vectors of tensor `name`, shape `(T, *shape)`, in its compute dtype.

        Args:
            name: a merged tensor name.
            base: `theta_0[name]` when the caller already holds it (saves a read of a lazy base).
        """
        base = self.base[name] if base is None else base
        dtype = compute_dtype(base.dtype)
        out = torch.empty((self.num_tasks, *base.shape), dtype=dtype)
        for i in range(self.num_tasks):
            self.experts.task_vector(i, name, base, dtype, out=out[i])
        if name not in self._finite:
            self._check(name, out)
        return out

    def row_blocks(self, name: str) -> bool:
        """Whether tensor `name` can be read a row block at a time (`stack_rows`): its source
        reads stored tensors (no custom task vectors) and it has rows (see `StreamTaskVectors.stack_rows`)."""
        return not self._custom_task_vector and len(self._meta[name][0]) >= 1

    def mark_checked(self, name: str) -> None:
        """Every value of tensor `name` was read and found finite (by row blocks)."""
        self._finite.add(name)

    def _check(self, name: str, values: Tensor) -> None:
        """Refuse non-finite task vectors, naming the base or expert tensor behind them."""
        # NaN or Inf in the base or an expert makes the difference non-finite, so one finite sum
        # of the task vectors clears every input of this tensor.
        if not all_finite(values):
            check_values(self.base, self.experts, name)
        self._finite.add(name)

    def __iter__(self) -> Iterator[tuple[str, Tensor]]:
        for name in self.names:
            yield name, self.stack(name)

    @property
    def numel(self) -> int:
        """Number of merged scalars per task (P)."""
        return sum(math.prod(shape) for shape, _ in self._meta.values())

    def chunks(self, stride: int = 1, chunk_size: int = 1 << 18) -> Iterator[Tensor]:
        """Every `stride`-th merged scalar's task values, as `(T, <= chunk_size)` blocks, tensor
        after tensor (a `select.Stream`).

        Cheaper than `stack` for statistics passes: small blocks are recycled by the allocator
        instead of faulting in a fresh `T x numel` buffer per tensor. Values are bit-identical to
        `stack`'s.

        Args:
            stride: take every `stride`-th scalar of each tensor (a sample when > 1).
            chunk_size: scalars per task in one block.
        """
        for name in self.names:
            yield from self._chunks_of(name, stride, chunk_size)

    def map_chunks(self, fn: Callable[[Tensor], T], workers: int, stride: int = 1, chunk_size: int = 1 << 18) -> Iterator[T]:
        """`fn(block)` for every block of `chunks(stride)`, in the same order, computed by
        `workers` threads that each build (read, subtract) and reduce whole tensors: no block
        crosses between cores. Each thread runs torch and the compiled kernels on one thread.

        Args:
            fn: the per-block work (called on worker threads; it must not keep the block).
            workers: threads (>= 1).
            stride: take every `stride`-th scalar of each tensor (a sample when > 1).
            chunk_size: scalars per task in one block.
        """

        def job(name: str) -> list[T]:
            return [fn(block) for block in self._chunks_of(name, stride, chunk_size)]

        # One tensor more than threads in flight: a worker never waits for the consumer.
        for results in ordered_map(job, self.names, workers, ahead=1, name="stats-worker"):
            yield from results

    def _chunks_of(self, name: str, stride: int, chunk_size: int) -> Iterator[Tensor]:
        """`chunks`' blocks of tensor `name`."""
        for flat_base, stored, is_task_vector in self._pieces(name, stride, chunk_size):
            dtype = compute_dtype(flat_base.dtype)
            fast = not is_task_vector and flat_base.is_floating_point() and flat_base.device.type == "cpu" and all(
                v.is_floating_point() and v.device.type == "cpu" for v in stored)
            for start in range(0, flat_base.numel(), chunk_size):
                block_base = flat_base[start : start + chunk_size]
                block = self._empty((self.num_tasks, block_base.numel()), dtype)
                finite = fast
                if fast:
                    # The upcast is exact and the subtraction rounds once, as in `as_task_vector`
                    # (same values): bfloat16 in one compiled pass that also checks finiteness,
                    # else with the base cast once per block instead of once per expert.
                    base_c = None
                    for i, values in enumerate(stored):
                        piece = values[start : start + chunk_size]
                        done = kernels.difference_into(block[i], piece, block_base)
                        if done is not None:
                            finite = finite and done
                            continue
                        finite = False
                        if base_c is None:
                            base_c = self._empty(tuple(block_base.shape), dtype).copy_(block_base)
                        block[i].copy_(piece).sub_(base_c)
                else:
                    for i, values in enumerate(stored):
                        as_task_vector(values[start : start + chunk_size], block_base, dtype, is_task_vector, out=block[i])
                if name not in self._finite and not finite and not all_finite(block):
                    check_values(self.base, self.experts, name)
                yield block
        if stride == 1:
            self._finite.add(name)

    def _pieces(self, name: str, stride: int, chunk_size: int) -> Iterator[tuple[Tensor, list[Tensor], bool]]:
        """`(flat base, flat stored values per expert, stored are task vectors)` covering every
        `stride`-th scalar of tensor `name`, in order, in pieces whose boundaries fall on multiples
        of `chunk_size` sampled scalars (so `chunks` yields the same blocks as from whole tensors).
        Large tensors are read a row block at a time (never T whole tensors at once)."""
        shape, _ = self._meta[name]
        if self._custom_task_vector:
            # A source that computes task vectors itself is honoured as it is (whole tensors).
            base = self.base[name]
            dtype = compute_dtype(base.dtype)
            yield base.detach().reshape(-1)[::stride], [
                self.experts.task_vector(i, name, base, dtype).reshape(-1)[::stride] for i in range(self.num_tasks)], True
            return
        if stride > 1:
            sample = self._strided_sample(name, stride)
            if sample is not None:
                yield sample[0], sample[1:], self.experts.task_vectors
                return
        rows = self._piece_rows(name, stride, chunk_size)
        if rows is None:
            base = self.base[name]
            yield base.detach().reshape(-1)[::stride], [
                self.experts.get(i, name).detach().reshape(-1)[::stride] for i in range(self.num_tasks)], self.experts.task_vectors
            return
        row_numel = math.prod(shape[1:])
        sampled: list[list[Tensor]] = [[] for _ in range(self.num_tasks + 1)]
        for start in range(0, shape[0], rows):
            stop = min(shape[0], start + rows)
            phase = (-start * row_numel) % stride  # the first sampled scalar inside this block
            values = [read_rows(self.base, name, start, stop)] + [
                self.experts.get_rows(i, name, start, stop) for i in range(self.num_tasks)]
            values = [v.detach().reshape(-1)[phase::stride] for v in values]
            if stride == 1:
                yield values[0], values[1:], self.experts.task_vectors
            else:
                for kept, v in zip(sampled, values):
                    kept.append(v.clone())  # a sample: drop the block it was taken from
                del values
        if stride > 1:
            joined = [torch.cat(parts) for parts in sampled]
            yield joined[0], joined[1:], self.experts.task_vectors

    def _strided_sample(self, name: str, stride: int) -> list[Tensor] | None:
        """`[base, expert_1, ...]` flat samples of every `stride`-th scalar of tensor `name`, each
        read alone from lazy files; None when the base or an expert cannot read a sample so (it is
        then taken from row blocks, reading the whole tensor)."""
        base = read_strided(self.base, name, stride)
        if base is None:
            return None
        sample = [base]
        for i in range(self.num_tasks):
            values = self.experts.get_strided(i, name, stride)
            if values is None or values.numel() != base.numel():
                return None
            sample.append(values)
        return sample

    def _piece_rows(self, name: str, stride: int, chunk_size: int) -> int | None:
        """Rows per piece for `_pieces`, or None to read the tensor whole."""
        shape, dtype = self._meta[name]
        rows = block_rows(shape, dtype)
        if rows is None:
            return None
        if stride > 1:
            return rows
        # Pieces must start at multiples of chunk_size scalars, i.e. of `unit` rows.
        row_numel = math.prod(shape[1:])
        unit = chunk_size // math.gcd(row_numel, chunk_size)
        rows = max(unit, rows // unit * unit)
        fits = unit * row_numel * compute_dtype(dtype).itemsize <= 4 * ROW_BLOCK_BYTES
        return rows if rows < shape[0] and fits else None

    def trim_statistics(self, mask_rate: float) -> TrimStatistics:
        """Exact per-task global magnitude threshold and removed-mass ratio over all merged tensors.

        Args:
            mask_rate: fraction of entries dropped by magnitude, in [0, 1].
        """
        if mask_rate not in self._trim_cache:
            # One worker: blocks are built (read, cast, subtracted) one ahead on a second core
            # while the selection reduces the current one. Several: the window select's passes
            # go through `map_blocks`, each worker building and reducing whole tensors on its own
            # core; the read-ahead stream then serves only the radix fallback.
            workers = self.workers
            self._trim_cache[mask_rate] = streamed_trim_statistics(
                ahead_stream(self.chunks),
                num_tasks=self.num_tasks,
                numel=self.numel,
                mask_rate=mask_rate,
                dtype=self.selection_dtype,
                map_blocks=_WorkerMap(self, workers) if workers > 1 else None,
            )
        return self._trim_cache[mask_rate]


class _WorkerMap:
    """A `select.BlockMap` over a `TaskVectors`' chunks on `workers` threads, with `map_tasks` for
    the per-task selections that follow the pass."""

    def __init__(self, task_vectors: TaskVectors, workers: int) -> None:
        self.task_vectors, self.workers = task_vectors, workers

    def __call__(self, fn: Callable[[Tensor], T], stride: int) -> Iterator[T]:
        return self.task_vectors.map_chunks(fn, self.workers, stride)

    def map_tasks(self, fn: Callable[[int], T], tasks: Iterable[int]) -> list[T]:
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="stats-select") as pool:
            return list(pool.map(fn, tasks))
