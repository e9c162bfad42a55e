"""The merge engine: validate, gather statistics, then merge tensor by tensor.

```python
merged = merge_state_dicts(base, experts, NeuroMerging(mask_rate=0.8), routing=None, exclude=None)
stream = merge_stream(base, experts, TIES(), threads=2)   # validated, statistics gathered
for name, tensor in stream: ...                           # merged tensors in base order
```
The engine never holds more than one unit's task vectors at a time per thread, plus the next unit's
while it is prefetched (see `threads.py` for how threads are used), so experts can be streamed from disk. A unit is a tensor or, for tensors larger than
`task_vectors.ROW_BLOCK_BYTES` whose method is `separable` for their route, a block of rows read
alone: O(T x max(block, largest whole-tensor unit)) extra memory, whatever the vocabulary size. The
result has the keys, shapes and dtypes of `base` (and its tensors' devices; the arithmetic runs on
the CPU); tensors that are not merged (integer/bool, excluded) are copies of the base.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from neuroflow.merging import kernels
from neuroflow.merging.base import MergeMethod
from neuroflow.merging.buffers import StreamTaskVectors as _StreamTaskVectors
from neuroflow.merging.routing import Route, resolve_routing
from neuroflow.merging.select import TrimStatistics
from neuroflow.merging.recycler import Recycler as _Recycler
from neuroflow.merging.sources import DictExperts, ExpertSource, read_rows, tensor_meta
from neuroflow.merging.steps import TieFallback
from neuroflow.merging.task_vectors import block_rows, compute_dtype
from neuroflow.merging.threads import intra_op_threads, ordered_map, share_cores, workers_for
from neuroflow.merging.validation import MergeInputError, all_finite, validate_inputs

Progress = Callable[[str], Any] | Any  # a callable taking the tensor name, or a tqdm-like `.update(n)`
# The next tensor's task vectors are read ahead only when they fit in this many bytes, so the
# prefetch adds at most this much to the (T + 2) x largest-tensor working set.
PREFETCH_BYTES = 256 << 20
# Free buffers kept for the statistics passes: a few blocks and their base copies.
STATS_POOL_BYTES = 32 << 20


@dataclass
class MergeResult:
    """What a merge produced.

    Attributes:
        state_dict: the merged weights (`theta`), same keys, shapes and dtypes as the base.
        info: method name, hyper-parameters, statistics (e.g. `sigma_per_task`, `lambda_2`) and
            routing counts, JSON-friendly, for merge cards.
    """

    state_dict: dict[str, Tensor]
    info: dict[str, Any] = field(default_factory=dict)


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


class MergeStream:
    """A validated merge whose statistics are gathered: iterate it for `(name, merged tensor)`.

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

    def __iter__(self) -> Iterator[tuple[str, Tensor]]:
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
        out: Tensor | None = None
        tie, redo = TieFallback(), []
        with torch.no_grad(), closing(units):
            for (name, rows), (merged, block_tie) in zip(work, units):
                if rows is not None:
                    if rows[0] == 0:
                        shape, _ = tensor_meta(self.base, name)
                        pooled = recycler is not None and merged.device.type == "cpu"
                        out = recycler.empty(shape, merged.dtype) if pooled else torch.empty(shape, dtype=merged.dtype, device=merged.device)
                        tie, redo = TieFallback(), []
                    out[rows[0] : rows[1]] = merged
                    # Each block has its own TieFallback; their sign sums add up to the tensor's.
                    tie.sign_sum += block_tie.sign_sum
                    if block_tie.assumed:
                        redo.append(rows)
                    del merged
                    if rows[1] < out.shape[0]:
                        continue
                    merged, out = self._finish_blocks(name, out, tie, redo, recycler), None
                yield name, merged
                del merged
                _tick(self.progress, name)

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
                tie = None if rows is None else TieFallback()
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
            tie = None if rows is None else TieFallback()
            return self._merge_one(name, list(self._read(name, rows)), recycler, tie), tie

        big = lambda unit: self._stack_bytes(*unit) > PREFETCH_BYTES  # noqa: E731
        yield from ordered_map(job, work, workers, alone=big, name="merge-worker")

    def _finish_blocks(self, name: str, out: Tensor, tie: TieFallback, redo: list[tuple[int, int]], recycler: _Recycler | None) -> Tensor:
        """A tensor merged by row blocks: blocks that assumed the tie fallback +1 merged again
        when the whole tensor's fallback is 0 or -1 (rare: exact cancellations)."""
        if redo and tie.fallback <= 0:
            known = TieFallback(value=tie.fallback)
            for start, stop in redo:
                with intra_op_threads(self.threads):
                    out[start:stop] = self._merge_one(name, list(self._read(name, (start, stop))), recycler, known)
        self.task_vectors.mark_checked(name)
        return out


def merge_stream(
    base: Mapping[str, Tensor],
    experts: Sequence[Mapping[str, Tensor]] | ExpertSource,
    method: MergeMethod,
    routing: Mapping[str, Route | str] | None = None,
    exclude: Sequence[str] | None = None,
    progress: Progress | None = None,
    threads: int | None = None,
    prefetch: bool = True,
    recycle: bool = True,
) -> MergeStream:
    """Validate the inputs and gather the method's statistics; the returned stream then yields the
    merged tensors one at a time (`(name, tensor)` in base order), so they can be written as they
    come without ever holding the merged model.

    Args:
        base: the pre-trained weights `theta_0` (a dict, or a lazy mapping such as `SafetensorsFile`).
        experts: the fine-tuned weights of each expert (mappings), or an `ExpertSource`.
        method: the merge method (e.g. `NeuroMerging(mask_rate=0.8)`).
        routing: name -> route; see `resolve_routing`.
        exclude: exact names or glob patterns of tensors copied from the base instead of merged.
        progress: called once per tensor of the base after it is yielded: a callable taking the
            name, or an object with `update(n)` such as `tqdm(total=len(base))`.
        threads: torch intra-op threads for the maths (None: torch's current setting).
        prefetch: read the next tensor's task vectors in a background thread while the current
            one is merged (only when they fit in `PREFETCH_BYTES`, and only when `threads` leaves a
            core free for it).
        recycle: reuse the buffers of task-vector stacks and base copies for later tensors that
            fit in them (at most (4T + 6) x the largest unit is kept free, and 32 MiB for the
            statistics passes); a buffer the method still references is never reused.

    Raises:
        MergeInputError: inputs that cannot be merged (names, shapes, dtypes, routes: before any
            statistics); NaN/Inf input values, where they are first read (the statistics pass, or
            the merge of that tensor, before it is yielded); a merged tensor with NaN/Inf values.
    """
    if not isinstance(method, MergeMethod):
        raise TypeError(f"method must be a MergeMethod, got {type(method).__name__}")
    # Counted before `intra_op_threads`, which may hold torch to one thread (threads=None would
    # then count 1): both passes use the same number of workers.
    workers = workers_for(threads, prefetch)
    with torch.no_grad(), intra_op_threads(threads):
        source = experts if isinstance(experts, ExpertSource) else DictExperts(list(experts))
        routes = resolve_routing(base, routing, exclude)
        validate_inputs(base, source, routes, exclude)
        task_vectors = _StreamTaskVectors(base, source, routes)
        task_vectors.workers = workers
        if recycle:
            # Statistics passes go block by block (`TaskVectors.chunks`: T x 2^18 values): a small
            # pool keeps their buffers from being faulted in afresh for every block.
            task_vectors.recycler = _Recycler(STATS_POOL_BYTES)
        stats = method.prepare(task_vectors)
    return MergeStream(base, source, method, routes, task_vectors, stats, progress, threads, prefetch, recycle)


def merge(
    base: Mapping[str, Tensor],
    experts: Sequence[Mapping[str, Tensor]] | ExpertSource,
    method: MergeMethod,
    routing: Mapping[str, Route | str] | None = None,
    exclude: Sequence[str] | None = None,
    progress: Progress | None = None,
    threads: int | None = None,
) -> MergeResult:
    """Merge experts into the base with `method`; returns the weights and a JSON-friendly info.

    Args:
        base: the pre-trained weights `theta_0` (a dict, or a lazy mapping such as `SafetensorsFile`).
        experts: the fine-tuned weights of each expert (mappings), or an `ExpertSource`.
        method: the merge method (e.g. `NeuroMerging(mask_rate=0.8)`).
        routing: name -> route; see `resolve_routing`.
        exclude: exact names or glob patterns of tensors copied from the base instead of merged.
        progress: called once per tensor of the base after it is done: a callable taking the name,
            or an object with `update(n)` such as `tqdm(total=len(base))`.
        threads: torch intra-op threads for the maths (None: torch's current setting).
    """
    stream = merge_stream(base, experts, method, routing, exclude, progress, threads, prefetch=False)
    return MergeResult(dict(stream), stream.info)


def merge_state_dicts(
    base: Mapping[str, Tensor],
    experts: Sequence[Mapping[str, Tensor]] | ExpertSource,
    method: MergeMethod,
    routing: Mapping[str, Route | str] | None = None,
    exclude: Sequence[str] | None = None,
    progress: Progress | None = None,
    threads: int | None = None,
) -> dict[str, Tensor]:
    """The merged weights `theta` (same keys, shapes and dtypes as `base`); see `merge` for the info.

    Args:
        base: the pre-trained weights `theta_0`.
        experts: the fine-tuned weights of each expert, or an `ExpertSource`.
        method: the merge method.
        routing: name -> route; missing names follow the shape rule.
        exclude: exact names or glob patterns of tensors copied from the base.
        progress: per-tensor hook (callable taking the name, or tqdm-like `update`).
        threads: torch intra-op threads for the maths (None: torch's current setting).
    """
    return merge(base, experts, method, routing, exclude, progress, threads).state_dict
