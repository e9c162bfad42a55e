"""Run an iterator one step ahead on a background thread.

A statistics pass alternates between building a block of task vectors (reads, casts, subtractions)
and reducing it; both release the GIL, so producing block i + 1 while block i is reduced overlaps
them on a second core. Values and their order are unchanged.
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
