"""How a streamed merge uses its threads.

- 1 thread: the maths on the calling thread, a prefetch thread reading the next tensor beside it.
- 2 or more, with the compiled kernels: worker threads that each take whole units (a tensor or a
  row block: read, subtract, merge or reduce) on one core, torch and the kernels held to one
  thread there (`workers_for`, `ordered_map`). Splitting every kernel over the cores, with a reader
  thread handing it the inputs, made 2 threads slower than 1 on 2 cores (each hand-off moves the
  unit's data between cores), while two 1-thread merges side by side ran at full speed.
- Without the kernels: torch's intra-op threads (`intra_op_threads`).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

import torch

from neuroflow.merging import kernels

T = TypeVar("T")
R = TypeVar("R")
_END = object()


def share_cores(threads: int | None) -> bool:
    """Whether the maths keep torch's own ops on one thread so that a reader thread can run beside
    `threads` compiled-kernel threads that fill every core (see `intra_op_threads`).

    Args:
        threads: the merge's `threads` (None: torch's setting).
    """
    count = threads or torch.get_num_threads()
    return kernels.enabled() and count >= (os.cpu_count() or 1) > 1


@contextmanager
def intra_op_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op thread count, and the compiled kernels', set to `threads` inside the block
    (None: torch's left as it is, the kernels' following it).

    When `threads` fill every core and the compiled kernels are in use, torch's own ops run on one
    thread and only the kernels split over `threads`: an OpenMP team beside the reader thread
    waits at every op's barrier for a descheduled worker (measured: 2 OpenMP threads + reader on 2
    cores were slower than 1 thread), while the kernels' threads just share the cores with it.

    Args:
        threads: a positive count, or None.
    """
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
    share = share_cores(threads)
    if threads is None and not share:
        with kernels.threads(None):
            yield
        return
    count = threads or torch.get_num_threads()
    before = torch.get_num_threads()
    torch.set_num_threads(1 if share else count)
    try:
        with kernels.threads(count):
            yield
    finally:
        torch.set_num_threads(before)


def workers_for(threads: int | None, overlap: bool) -> int:
    """Units worked on at once: `threads` with the compiled kernels and 2 or more threads, else 1.

    Args:
        threads: the merge's `threads` (None: torch's setting).
        overlap: whether work may overlap at all (the streamed merge's `prefetch`).
    """
    count = threads or torch.get_num_threads()
    return count if overlap and count > 1 and kernels.enabled() else 1


def ordered_map(
    job: Callable[[T], R],
    items: Iterable[T],
    workers: int,
    ahead: int = 0,
    alone: Callable[[T], bool] | None = None,
    name: str = "neuroflow-worker",
) -> Iterator[R]:
    """`job(item)` for every item on `workers` threads, yielded in the items' order, torch and the
    compiled kernels held to one thread on each worker (and on the caller while it runs).

    Args:
        job: the work on one item (runs on a worker thread, in `torch.no_grad`).
        items: the items, consumed lazily.
        workers: threads (>= 1).
        ahead: items in flight beyond `workers` (so no worker waits on the consumer).
        alone: items it holds for run with nothing beside them (memory: a big unit).
        name: the worker threads' name prefix.
    """

    def run(item: T) -> R:
        with torch.no_grad():  # grad mode is per thread
            return job(item)

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name, initializer=torch.set_num_threads, initargs=(1,))
    pending: deque[tuple[Future, bool]] = deque()
    following = iter(items)
    waiting = next(following, _END)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with kernels.threads(1):
            while waiting is not _END or pending:
                while waiting is not _END and len(pending) < workers + ahead:
                    big = alone is not None and alone(waiting)
                    if pending and (big or pending[-1][1]):
                        break
                    pending.append((pool.submit(run, waiting), big))
                    waiting = next(following, _END)
                result = pending.popleft()[0].result()
                yield result
                del result
    finally:
        for future, _ in pending:
            future.cancel()
        pool.shutdown(wait=True)
        torch.set_num_threads(before)
