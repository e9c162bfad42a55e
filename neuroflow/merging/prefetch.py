"""Overlap a loop with a background thread: produce its items ahead (`ahead`) or consume them
behind it (`behind`).

A statistics pass alternates between building a block of task vectors (reads, casts, subtractions)
and reducing it; both release the GIL, so producing block i + 1 while block i is reduced overlaps
them on a second core. Values and their order are unchanged. Writing a merged tensor (a copy into
the page cache: allocating fresh pages is most of its cost) likewise overlaps merging the next.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import torch

T = TypeVar("T")

_DONE = object()


def ahead(items: Iterable[T], depth: int = 1) -> Iterator[T]:
    """Yield `items` in order while a daemon thread produces up to `depth` items ahead; an
    exception of the producer is raised here, at the item it failed on. Closing the returned
    generator stops the producer at its next item.

    Args:
        items: any iterable; iterated on the background thread, with torch ops single-threaded
            there (the consumer keeps the intra-op threads).
        depth: items produced ahead at most (memory: `depth + 1` items alive at once).
    """
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        torch.set_num_threads(1)
        try:
            for item in items:
                if not put((item, None)):
                    return
                del item
            put((_DONE, None))
        except BaseException as error:  # handed to the consumer, raised there
            put((_DONE, error))

    # torch's thread setting is process-wide: the producer's `set_num_threads(1)` is undone here.
    threads = torch.get_num_threads()
    worker = threading.Thread(target=produce, name="neuroflow-ahead", daemon=True)
    worker.start()
    try:
        while True:
            item, error = slots.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item
            del item
    finally:
        stop.set()
        worker.join()
        torch.set_num_threads(threads)


def ahead_stream(stream: Callable[[int], Iterable[T]], cores: int | None = None) -> Callable[[int], Iterable[T]]:
    """`stream(stride)` whose full passes (stride 1) are produced one item ahead when torch's
    intra-op threads leave a core free for the producer (samples, being small, stay on the
    calling thread).

    Args:
        stream: a `select.Stream`.
        cores: the machine's cores (None: `os.cpu_count()`).
    """
    # Measured at 210M: with 2 maths threads on 2 cores, a third thread made TIES 20% slower.
    if torch.get_num_threads() >= (cores or os.cpu_count() or 1):
        return stream
    return lambda stride=1: ahead(stream(stride)) if stride == 1 else stream(stride)


class behind:
    """Call `consume(item)` on a daemon thread for each `put(item)`, in order, up to `depth`
    items behind the caller. An exception of `consume` is raised by the next `put` or by `join`;
    leaving the `with` block on an error stops the worker without consuming what is queued.

    Args:
        consume: called once per item, on the worker thread (torch's thread setting, being
            process-wide, is left alone: `consume` should not need intra-op threads).
        depth: items queued at most (memory: `depth + 1` items alive beside the caller's).
    """

    def __init__(self, consume: Callable[[T], None], depth: int = 2) -> None:
        self._consume = consume
        self._slots: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._run, name="neuroflow-behind", daemon=True)

    def _run(self) -> None:
        while True:
            item = self._slots.get()
            if item is _DONE or self._stop.is_set():
                return
            try:
                self._consume(item)
            except BaseException as error:  # raised on the caller's thread
                self._error = error
                self._stop.set()
                return
            finally:
                del item

    def __enter__(self) -> behind:
        self._worker.start()
        return self

    def put(self, item: T) -> None:
        """Queue `item` (waits while `depth` items are queued)."""
        while True:
            self._raise()
            try:
                self._slots.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def join(self) -> None:
        """Wait until every queued item is consumed; raise the error of `consume`, if any."""
        self._finish()
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _finish(self) -> None:
        if self._worker.is_alive():
            while self._worker.is_alive():
                try:
                    self._slots.put(_DONE, timeout=0.1)
                    break
                except queue.Full:
                    continue
            self._worker.join()

    def __exit__(self, kind, error, trace) -> None:
        if kind is None:
            self.join()
        else:
            self._stop.set()
            while True:  # unblock a worker waiting on an empty queue, drop what is queued
                try:
                    self._slots.get_nowait()
                except queue.Empty:
                    break
            self._slots.put(_DONE)
        self._finish()
