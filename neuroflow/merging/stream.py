"""A validated merge, merged unit by unit: whole tensors, or blocks of rows written as they come.

`merge_stream` (engine.py) validates the inputs and gathers the method's statistics; the
`MergeStream` it returns then merges on demand. Iterating it gives `(name, tensor)` in base order.
`pieces()` gives the same merge without assembling the tensors merged by row blocks: each block is
yielded as soon as it is merged, so a writer can put it straight at its offset in the output file
(at 210M, assembling the row blocks of the MLP and embedding matrices cost 0.8 CPU s of copies and
page faults, and a 65 MB buffer per embedding).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from neuroflow.merging.base import MergeMethod
from neuroflow.merging.recycler import Recycler as _Recycler
from neuroflow.merging.select import TrimStatistics
from neuroflow.merging.sources import read_rows, tensor_meta
from neuroflow.merging.steps import TieFallback
from neuroflow.merging.task_vectors import block_rows, compute_dtype
from neuroflow.merging.threads import intra_op_threads, ordered_map, share_cores
from neuroflow.merging.validation import MergeInputError, all_finite

Progress = Callable[[str], Any] | Any  # a callable taking the tensor name, or a tqdm-like `.update(n)`
# The next tensor's task vectors are read ahead only when they fit in this many bytes, so the
# prefetch adds at most this much to the (T + 2) x largest-tensor working set.
PREFETCH_BYTES = 256 << 20
# A row block's ambiguous entries are kept for a later patch (instead of merging the block again)
# up to this fraction of the block: at 1.26B TIES they were ~1% of bfloat16 task values.
KEEP_FRACTION = 1 / 8


class Piece(NamedTuple):
    """A merged tensor, or a block of its rows.

    Attributes:
        name: the tensor's name in the base.
        start: the first row the block holds (0 for a whole tensor).
        tensor: the merged values (the whole tensor, or rows `start : start + len(tensor)`).
        last: the tensor's final piece: every row of it has been given its final value.
    """

    name: str
    start: int
    tensor: Tensor
    last: bool


def _jsonable(value: Any) -> Any:
    if isinstance(value, TrimStatistics):
        return value.summary()
    if isinstance(value, Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _tick(progress: Progress | None, name: str) -> None:
    if progress is None:
        return
    if hasattr(progress, "update"):
        progress.update(1)
    else:
        progress(name)


def _check_merged_finite(tensor: Tensor, name: str, method: MergeMethod) -> None:
    if all_finite(tensor):
        return
    bad = bool(torch.isnan(tensor).any())
    raise MergeInputError(
        f"{method!r} produced {'NaN' if bad else 'Inf'} values in merged tensor {name!r}; nothing is "
        "written (check the method's hyperparameters and the inputs' magnitudes)"
    )


@dataclass
class _BlockTie(TieFallback):
    """A row block's first-pass `TieFallback` that also keeps what merging its ambiguous entries
    again takes: their base values and task values, gathered while the block's stack is at hand.

    Attributes:
        inputs: `[base values (k,), task values (T, k)]` at `positions`, or None (no ambiguous
            entries, no positions reported, or more than `KEEP_FRACTION` of the block: the block
            is then read and merged again whole if its guess is overturned).
    """

    inputs: tuple[Tensor, Tensor] | None = None

    def keep_inputs(self, base: Tensor, stack: Tensor) -> None:
        """Gather the ambiguous entries' inputs from the block's base rows and task-vector stack
        (trimmed in place or not: trimming again by the same limits changes nothing)."""
        if not self.assumed or self.positions is None or self.positions.numel() > base.numel() * KEEP_FRACTION:
            return
        flat = stack.reshape(stack.shape[0], -1)
        self.inputs = (base.detach().reshape(-1)[self.positions], flat[:, self.positions])


class MergeStream:
    """A validated merge whose statistics are gathered: iterate it for `(name, merged tensor)`, or
    take its `pieces()` to write tensors merged by row blocks without assembling them.

    Built by `merge_stream`. `info` is complete before the first tensor is merged. Iterating a second
    time merges again (the statistics are reused).

    Attributes:
        names: every base tensor name, in the order they are yielded.
        info: method, hyper-parameters, statistics and routing counts (JSON-friendly).
    """

    def __init__(self, base, source, method, routes, task_vectors, stats, progress, threads, prefetch, recycle) -> None:
        self.base, self.source, self.method, self.routes = base, source, method, routes
        self.task_vectors, self.stats = task_vectors, stats
        self.progress, self.threads, self.prefetch, self.recycle = progress, threads, prefetch, recycle
        self.names = list(base)
        self._sign_sums: dict[str, int] = {}  # elected signs of a row-blocked tensor so far
        kinds = [r.kind for r in routes.values()]
        self.info = {
            "method": method.name,
            "class_path": f"{type(method).__module__}.{type(method).__qualname__}",
            "hparams": _jsonable(method.hparams()),
            "num_experts": len(source),
            "statistics": _jsonable(stats),
            "routing": {k: kinds.count(k) for k in ("neuron", "point", "skip")},
            "merged_numel": task_vectors.numel,
        }

    def _units(self, name: str) -> list[tuple[int, int] | None]:
        """The row blocks tensor `name` is read and merged in (`[None]`: whole)."""
        route = self.routes[name]
        if route.kind == "skip" or not self.method.separable(route) or not self.task_vectors.row_blocks(name):
            return [None]
        shape, dtype = tensor_meta(self.base, name)
        rows = block_rows(shape, dtype)
        if rows is None:
            return [None]
        return [(start, min(start + rows, shape[0])) for start in range(0, shape[0], rows)]

    def _read(self, name: str, rows: tuple[int, int] | None = None) -> tuple[Tensor, Tensor | None]:
        """The base tensor (or its rows) and, for merged tensors, the stacked task vectors."""
        if rows is not None:
            base_rows = read_rows(self.base, name, *rows)
            return base_rows, self.task_vectors.stack_rows(name, rows[0], rows[1], base_rows)
        tensor = self.base[name]
        if self.routes[name].kind == "skip":
            return tensor, None
        return tensor, self.task_vectors.stack(name, base=tensor)

    def _numel(self, name: str, rows: tuple[int, int] | None) -> int:
        shape, _ = tensor_meta(self.base, name)
        return math.prod(shape) if rows is None else (rows[1] - rows[0]) * math.prod(shape[1:])

    def _stack_bytes(self, name: str, rows: tuple[int, int] | None) -> int:
        if self.routes[name].kind == "skip":
            return 0
        return len(self.source) * self._numel(name, rows) * compute_dtype(tensor_meta(self.base, name)[1]).itemsize

    def _merge_one(self, name: str, inputs: list, recycler: _Recycler | None, tie: TieFallback | None = None) -> Tensor:
        """Merge one unit. `inputs` is `[base tensor or rows, stack]` from `_read`, emptied here: the
        merge owns them, so the stack is freed (back to the recycler) before the sum is made."""
        tensor, stack = inputs
        inputs.clear()
        if stack is None:
            return tensor.detach().clone()
        dtype = compute_dtype(tensor.dtype)
        own = tensor.dtype != dtype or tensor.device.type != "cpu"  # theta0 is a private copy
        if own and recycler is not None:
            theta0 = recycler.empty(tuple(tensor.shape), dtype).copy_(tensor.detach())
        else:
            theta0 = tensor.detach().to(device="cpu", dtype=dtype)
            own = own and theta0.data_ptr() != tensor.data_ptr()
        route = self.routes[name]
        if tie is None:
            delta = self.method.merge_tensor(name, theta0, stack, route, self.stats)
        else:
            delta = self.method.merge_rows(name, theta0, stack, route, self.stats, tie)
            if isinstance(tie, _BlockTie):
                tie.keep_inputs(tensor, stack)
        del stack  # free T x tensor before the sum is allocated
        if delta.shape != tensor.shape:
            raise MergeInputError(
                f"{type(self.method).__name__} returned shape {tuple(delta.shape)} for tensor {name!r} "
                f"of shape {tuple(tensor.shape)}"
            )
        # theta0 + delta, in place when theta0 is ours and the method did not keep it (same sum).
        if own and torch._C._storage_Use_Count(theta0.untyped_storage()._cdata) <= 2 and delta.data_ptr() != theta0.data_ptr():
            total = theta0.add_(delta.to(dtype))
        else:
            total = theta0 + delta.to(dtype)
        del delta, theta0
        if recycler is not None and tensor.device.type == "cpu" and tensor.dtype != dtype:
            # Cast into a recycled buffer: it returns once the consumer (the shard writer) drops it.
            merged = recycler.empty(tuple(tensor.shape), tensor.dtype).copy_(total)
        else:
            merged = total.to(device=tensor.device, dtype=tensor.dtype)
        del total
        _check_merged_finite(merged, name, self.method)
        return merged

    def pieces(self) -> Iterator[Piece]:
        """The merged model as `Piece`s, in base order: a whole tensor, or, for tensors merged by
        row blocks, each block as soon as it is merged (a writer puts it at its offset; nothing
        assembles the tensor). From the first block merged under an assumed tie fallback on, the
        tensor's blocks come after its last one, the entries the whole tensor's fallback changes
        patched; a block with too many such entries to keep comes again, merged whole with the
        tensor's fallback, after the tensor's other blocks. Only a tensor's final piece has
        `last` set."""
        work = [(name, rows) for name in self.names for rows in self._units(name)]
        merged_work = [(n, r) for n, r in work if self.routes[n].kind != "skip"]
        largest = max((self._numel(n, r) for n, r in merged_work), default=0)
        # A unit holds at most (T + 2) x its size (stack, base copy, sum) and the prefetched unit's
        # stack is live beside it. Room for twice that keeps every buffer in circulation while
        # finalizers lag and shapes alternate: at (2T + 3) units, 210M TIES faulted 20% more pages
        # in and peaked higher (fragmentation) than at (4T + 6).
        recycler = _Recycler((4 * len(self.source) + 6) * largest * 4) if self.recycle else None
        self.task_vectors.recycler = recycler
        units = self._units_merged(work, recycler)
        with torch.no_grad(), closing(units):
            for (name, rows), (merged, block_tie) in zip(work, units):
                if rows is None:
                    yield Piece(name, 0, merged, True)
                    del merged
                    _tick(self.progress, name)
                    continue
                if rows[0] == 0:
                    tie, held, redo = TieFallback(), [], []
                # Each block has its own TieFallback; their sign sums add up to the tensor's.
                tie.sign_sum += block_tie.sign_sum
                self._sign_sums[name] = tie.sign_sum  # the next blocks' guess
                if block_tie.assumed and block_tie.inputs is None:
                    redo.append((rows, block_tie.guess))
                # A block whose ambiguous entries were kept waits for the tensor's fallback to be
                # patched in memory, and the blocks after it wait too: the writer keeps getting
                # rows in file order. At most the tensor itself is held, in its stored dtype.
                final = rows[1] >= tensor_meta(self.base, name)[0][0]
                if held or (block_tie.assumed and block_tie.inputs is not None):
                    held.append((rows[0], merged, block_tie))
                elif not final:
                    yield Piece(name, rows[0], merged, False)
                if not final:
                    del merged
                    continue
                # The tensor's last block. Guessing the sign of the blocks before (not always
                # +1) matters: at 1.26B TIES, +1 for every block overturned the guess of 49% of
                # the output (the tensor's fallback is -1 about half the time, and large blocks of
                # bf16 task values nearly always hold an exact cancellation).
                known = TieFallback(value=tie.fallback)
                again = [r for r, guess in redo if guess != tie.fallback]
                self._sign_sums.pop(name, None)
                if not held:
                    yield Piece(name, rows[0], merged, not again)
                del merged
                for index, (start, block, kept) in enumerate(held):
                    if kept.inputs is not None and kept.guess != tie.fallback:
                        # Only the ambiguous entries change: merge them alone, gathered as a
                        # (T, k) block (the methods that report positions are element-wise).
                        with intra_op_threads(self.threads):
                            values = self._merge_one(name, list(kept.inputs), None, known)
                        block.view(-1)[kept.positions] = values
                    yield Piece(name, start, block, index == len(held) - 1 and not again)
                held = []
                # Blocks whose ambiguous entries were too many to keep are merged again whole.
                for index, (start, stop) in enumerate(again):
                    with intra_op_threads(self.threads):
                        block = self._merge_one(name, list(self._read(name, (start, stop))), recycler, known)
                    yield Piece(name, start, block, index == len(again) - 1)
                    del block
                self.task_vectors.mark_checked(name)
                _tick(self.progress, name)

    def __iter__(self) -> Iterator[tuple[str, Tensor]]:
        out: Tensor | None = None
        for piece in self.pieces():
            if out is None and piece.last:  # a tensor that came in one piece: it is whole
                yield piece.name, piece.tensor
                continue
            if out is None:
                shape, _ = tensor_meta(self.base, piece.name)
                out = torch.empty(shape, dtype=piece.tensor.dtype, device=piece.tensor.device)
            out[piece.start : piece.start + piece.tensor.shape[0]] = piece.tensor
            if piece.last:
                yield piece.name, out
                out = None

    def _first_pass_tie(self, name: str) -> _BlockTie:
        """A row block's first-pass fallback, guessing the sign of the tensor's blocks merged so
        far (+1 before any; a worker thread may see fewer blocks than have been merged: any guess
        gives the same result, a wrong one only costs merging the block's ambiguous entries again)."""
        return _BlockTie(guess=-1.0 if self._sign_sums.get(name, 0) < 0 else 1.0)

    def _units_merged(self, work: list, recycler: _Recycler | None) -> Iterator[tuple[Tensor, TieFallback | None]]:
        """`(merged tensor or rows, the row block's TieFallback)` per unit, merged on this thread
        with `threads` intra-op threads; the next unit's inputs are read ahead by a prefetch thread
        when a core is free for it."""
        workers = self.task_vectors.workers
        if workers > 1:
            yield from self._units_merged_parallel(work, recycler, workers)
            return
        # The prefetch thread's own torch ops run single-threaded (OpenMP would give it a second
        # team of `threads` workers competing with the maths for the same cores).
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="merge-prefetch", initializer=torch.set_num_threads, initargs=(1,))
        # A reader thread beside OpenMP maths threads that already occupy every core oversubscribes
        # them (see `threads.intra_op_threads`); beside the compiled kernels' threads it does not.
        maths_threads = self.threads or torch.get_num_threads()
        prefetch = self.prefetch and (maths_threads < (os.cpu_count() or 1) or share_cores(self.threads))
        with torch.no_grad(), pool:
            pending: Future | None = None
            for index, (name, rows) in enumerate(work):
                if pending is not None:
                    inputs = list(pending.result())
                else:
                    with intra_op_threads(self.threads):
                        inputs = list(self._read(name, rows))
                pending = None  # the future holds the inputs too
                following = work[index + 1] if index + 1 < len(work) else None
                if prefetch and following is not None and self._stack_bytes(*following) <= PREFETCH_BYTES:
                    # Read (and subtract) the next tensor while this one is merged: I/O and the
                    # task-vector arithmetic overlap the method's maths.
                    pending = pool.submit(self._read, *following)
                tie = None if rows is None else self._first_pass_tie(name)
                with intra_op_threads(self.threads):
                    merged = self._merge_one(name, inputs, recycler, tie)
                yield merged, tie
                del merged

    def _units_merged_parallel(self, work: list, recycler: _Recycler | None, workers: int) -> Iterator[tuple[Tensor, TieFallback | None]]:
        """`_units_merged` on `workers` threads (`threads.ordered_map`), each reading and merging
        whole units; results in `work`'s order. Units whose stacks exceed `PREFETCH_BYTES` run
        alone, so the working set stays within `workers` x (T + 2) x PREFETCH_BYTES or (T + 2) x
        the largest unit."""

        def job(unit: tuple[str, tuple[int, int] | None]) -> tuple[Tensor, TieFallback | None]:
            name, rows = unit
            tie = None if rows is None else self._first_pass_tie(name)
            return self._merge_one(name, list(self._read(name, rows)), recycler, tie), tie

        big = lambda unit: self._stack_bytes(*unit) > PREFETCH_BYTES  # noqa: E731
        yield from ordered_map(job, work, workers, alone=big, name="merge-worker")
