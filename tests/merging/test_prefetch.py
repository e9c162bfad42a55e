"""`ahead` keeps values and order, raises the producer's error where it happened, and stops its
thread when the consumer stops early."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from neuroflow.merging.prefetch import ahead, ahead_stream


def test_items_in_order_and_torch_threads_kept() -> None:
    before = torch.get_num_threads()
    assert list(ahead(iter(range(100)), depth=3)) == list(range(100))
    assert list(ahead([])) == []
    assert torch.get_num_threads() == before


def test_producer_error_raised_at_its_item() -> None:
    def items():
        yield 1
        yield 2
        raise KeyError("tensor 'x' is missing")

    got = []
    with pytest.raises(KeyError, match="tensor 'x'"):
        for item in ahead(items()):
            got.append(item)
    assert got == [1, 2]


def test_closing_early_stops_the_producer() -> None:
    produced = []

    def items():
        for i in range(10_000):
            produced.append(i)
            yield i

    stream = ahead(items(), depth=1)
    assert next(stream) == 0
    stream.close()
    time.sleep(0.3)
    assert len(produced) <= 3  # the consumer's item, one queued, one being put
    assert not any(t.name == "neuroflow-ahead" and t.is_alive() for t in threading.enumerate())


def test_stream_prefetches_full_passes_only() -> None:
    calls = []

    def stream(stride: int = 1):
        calls.append((stride, threading.current_thread().name))
        yield from range(stride, 4)

    wrapped = ahead_stream(stream, cores=torch.get_num_threads() + 1)
    assert list(wrapped(1)) == [1, 2, 3]
    assert list(wrapped(2)) == [2, 3]
    # A full pass runs on the helper thread, a sample on the caller's.
    assert calls[0] == (1, "neuroflow-ahead")
    assert calls[1] == (2, threading.current_thread().name)
    assert ahead_stream(stream, cores=torch.get_num_threads()) is stream  # no core left for it


def test_behind_consumes_in_order_on_another_thread() -> None:
    from neuroflow.merging.prefetch import behind

    seen, names = [], set()

    def consume(item: int) -> None:
        time.sleep(0.001 if item % 7 else 0.01)
        seen.append(item)
        names.add(threading.current_thread().name)

    with behind(consume, depth=2) as sink:
        for i in range(50):
            sink.put(i)
    assert seen == list(range(50))
    assert names == {"neuroflow-behind"}


def test_behind_raises_the_consumer_error_and_stops() -> None:
    from neuroflow.merging.prefetch import behind

    seen = []

    def consume(item: int) -> None:
        if item == 3:
            raise OSError("disk full writing 'model.safetensors'")
        seen.append(item)

    with pytest.raises(OSError, match="disk full"):
        with behind(consume, depth=1) as sink:
            for i in range(1000):
                sink.put(i)
    assert seen == [0, 1, 2]
    assert not any(t.name == "neuroflow-behind" and t.is_alive() for t in threading.enumerate())


def test_behind_caller_error_drops_the_queue() -> None:
    from neuroflow.merging.prefetch import behind

    seen = []
    with pytest.raises(KeyError):
        with behind(lambda item: (time.sleep(0.05), seen.append(item)), depth=4) as sink:
            for i in range(5):
                sink.put(i)
            raise KeyError("merge failed")
    assert len(seen) < 5  # what was still queued is not consumed after the caller failed
    assert not any(t.name == "neuroflow-behind" and t.is_alive() for t in threading.enumerate())
