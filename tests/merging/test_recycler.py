"""The buffer pool: a buffer comes back only when its tensor and every view are gone, is reused for
the same size and dtype, and the least recently freed go first when the pool is full."""

from __future__ import annotations

import torch

from neuroflow.merging.recycler import Recycler


def test_a_dead_tensor_buffer_is_reused_for_the_same_size_and_dtype() -> None:
    pool = Recycler(1 << 20)
    first = pool.empty((4, 8), torch.float32)
    address = first.data_ptr()
    del first
    again = pool.empty((8, 4), torch.float32)  # same numel: any shape
    assert again.data_ptr() == address and pool.reused == 1 and again.shape == (8, 4)
    bigger = pool.empty((64,), torch.float32)  # does not fit in the live buffer's 128 bytes
    assert bigger.data_ptr() != address and pool.reused == 1


def test_a_free_buffer_serves_smaller_requests_of_any_dtype_best_fit_first() -> None:
    pool = Recycler(1 << 20)
    large, small = pool.empty((1024,), torch.float32), pool.empty((256,), torch.float32)
    large_at, small_at = large.data_ptr(), small.data_ptr()
    del large, small
    # 200 bytes: both buffers are large enough, but more than SLACK times too large.
    assert pool.empty((100,), torch.float16).data_ptr() not in (large_at, small_at)
    # 1024 bytes in bfloat16: the 1024-byte buffer fits exactly (best fit before the 4096-byte one).
    exact = pool.empty((512,), torch.bfloat16)
    assert exact.data_ptr() == small_at and exact.dtype == torch.bfloat16 and pool.reused == 1
    # 1200 bytes: the 4096-byte buffer (within SLACK), handed out as a prefix of the right shape.
    prefix = pool.empty((10, 30), torch.float32).fill_(3.0)
    assert prefix.data_ptr() == large_at and prefix.shape == (10, 30) and prefix.is_contiguous()
    assert float(prefix.sum()) == 900.0 and pool.reused == 2
    del prefix  # the whole buffer comes back, not just the prefix
    assert pool._bytes == 4096 + 200  # (the fresh float16 buffer above died too)


def test_a_live_view_keeps_the_buffer_out_of_the_pool() -> None:
    pool = Recycler(1 << 20)
    tensor = pool.empty((16,), torch.float32)
    tensor.copy_(torch.arange(16.0))
    view = tensor.reshape(4, 4)[1:]  # a view outliving its tensor (as flattened reads do)
    address = tensor.data_ptr()
    del tensor
    fresh = pool.empty((16,), torch.float32).fill_(-1.0)
    assert fresh.data_ptr() != address and pool.reused == 0
    assert torch.equal(view.reshape(-1), torch.arange(4.0, 16.0))  # untouched
    del view
    assert pool.empty((16,), torch.float32).data_ptr() == address


def test_the_cap_evicts_the_least_recently_freed() -> None:
    pool = Recycler(2 * 64 * 4)  # room for two 64-float buffers
    a, b, c = (pool.empty((64,), torch.float32) for _ in range(3))
    kept = b.data_ptr(), c.data_ptr()
    del a, b, c  # a is freed first, so it is the one evicted
    assert pool._bytes == 2 * 64 * 4
    x, y = pool.empty((64,), torch.float32), pool.empty((64,), torch.float32)
    assert {x.data_ptr(), y.data_ptr()} == set(kept) and pool.reused == 2
    too_big = pool.empty((1024,), torch.float32)
    del too_big  # larger than the cap: never kept
    assert pool._bytes <= pool.cap


def test_zero_size_and_scalar_tensors() -> None:
    pool = Recycler(1 << 10)
    assert pool.empty((0, 3), torch.float32).shape == (0, 3)
    scalar = pool.empty((), torch.float64).fill_(2.5)
    assert scalar.shape == () and float(scalar) == 2.5
