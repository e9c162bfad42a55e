"""The streamed global threshold equals `kthvalue` over the concatenation, exactly."""

from __future__ import annotations

import math

import pytest
import torch

import neuroflow.merging.radix_select as radix_select
import neuroflow.merging.select as select
from neuroflow.merging.select import streamed_trim_statistics, tensor_stream


def concatenated_truth(tensors: list[torch.Tensor], mask_rate: float):
    """What the non-streamed reference computes: kthvalue and removed-mass ratio of the concatenation."""
    flat = torch.cat([t.reshape(t.shape[0], -1) for t in tensors], dim=1).abs()
    k = math.floor(flat.shape[1] * mask_rate)
    out = []
    for row in flat:
        if k == 0:
            out.append((None, 0.0))
            continue
        kth = row.kthvalue(k).values
        row64 = row.double()
        total = row64.sum().item()
        out.append((kth, row64[row64 < kth].sum().item() / total if total > 0 else 0.0))
    return k, out


def awkward_tensors(dtype: torch.dtype, tasks: int = 3, seed: int = 0) -> list[torch.Tensor]:
    """Ties, exact zeros, negative zeros, subnormals, huge values, spread over several tensors."""
    g = torch.Generator().manual_seed(seed)
    tiny = torch.finfo(dtype).tiny
    a = torch.randn(tasks, 40, 7, generator=g, dtype=torch.float64).to(dtype)
    b = torch.randn(tasks, 300, generator=g, dtype=torch.float64).round(decimals=1).to(dtype)  # many ties
    c = torch.zeros(tasks, 25, dtype=dtype)
    c[:, ::2] = -0.0
    c[:, 1::3] = tiny / 8  # subnormal
    c[:, 2::5] = -tiny / 4
    d = torch.tensor([[1e30, -1e-30, 3.0, -3.0, 0.5]], dtype=dtype).repeat(tasks, 1)
    return [a, b, c, d]


def numel_of(tensors: list[torch.Tensor]) -> int:
    return sum(t[0].numel() for t in tensors)


def check_against_truth(tensors, mask_rate, dtype, strategy="auto") -> None:
    stats = streamed_trim_statistics(
        tensor_stream(tensors), num_tasks=tensors[0].shape[0], numel=numel_of(tensors), mask_rate=mask_rate,
        dtype=dtype, strategy=strategy,
    )
    k, truth = concatenated_truth(tensors, mask_rate)
    assert stats.k == k and stats.numel == numel_of(tensors)
    for t, (kth, sigma) in enumerate(truth):
        if kth is None:
            assert stats.thresholds[t] is None
        else:
            assert stats.thresholds[t].dtype == dtype
            assert torch.equal(stats.thresholds[t], kth), (t, stats.thresholds[t], kth)
        # float32 magnitudes are summed in float32 blocks (accumulated in float64).
        assert stats.sigma[t] == pytest.approx(sigma, rel=1e-12 if dtype == torch.float64 else 1e-6, abs=1e-300)


@pytest.mark.parametrize("strategy", ["auto", "radix"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mask_rate", [0.0, 0.001, 0.1, 0.5, 0.8, 0.9, 0.999, 1.0])
def test_threshold_equals_kthvalue_over_concatenation(dtype: torch.dtype, mask_rate: float, strategy: str) -> None:
    check_against_truth(awkward_tensors(dtype), mask_rate, dtype, strategy)


@pytest.mark.parametrize("mask_rate", [0.05, 0.5, 0.8, 0.97])
def test_sampled_window_path(monkeypatch, mask_rate: float) -> None:
    # A small sample size makes the window select sample (stride > 1) on this small input.
    monkeypatch.setattr(select, "_SAMPLE_SIZE", 64)
    check_against_truth(awkward_tensors(torch.float32, seed=5), mask_rate, torch.float32)


def test_window_misses_fall_back_to_radix(monkeypatch) -> None:
    calls = []
    radix = select.radix_select

    def counting_radix(*args):
        calls.append(1)
        return radix(*args)

    monkeypatch.setattr(select, "radix_select", counting_radix)
    # A bracket above every value: the full pass finds the k-th value below it and must fall back.
    monkeypatch.setattr(select, "_bracket", lambda *a: (torch.full((2,), 50.0), torch.full((2,), 60.0), 10))
    tensors = [torch.randn(2, 1000, generator=torch.Generator().manual_seed(1))]
    check_against_truth(tensors, 0.8, torch.float32)
    assert calls, "the radix fallback did not run"


def test_crowded_window_falls_back_to_radix(monkeypatch) -> None:
    # All magnitudes equal: every entry is inside the bracket, more than the cap allows.
    monkeypatch.setattr(select, "_SAMPLE_SIZE", 4096)
    tensors = [torch.full((2, 400000), -0.25)]
    calls = []
    radix = select.radix_select
    monkeypatch.setattr(select, "radix_select", lambda *a: calls.append(1) or radix(*a))
    check_against_truth(tensors, 0.5, torch.float32)
    assert calls


def test_k_equal_to_p_selects_the_maximum_and_k_zero_keeps_all() -> None:
    x = torch.tensor([[0.5, -2.0, 2.0, 0.0], [-0.0, 0.0, 0.0, 0.0]])
    for strategy in ("auto", "radix"):
        full = streamed_trim_statistics(tensor_stream([x]), num_tasks=2, numel=4, mask_rate=1.0, strategy=strategy)
        assert full.k == 4
        assert full.thresholds[0].item() == 2.0 and full.thresholds[1].item() == 0.0
        # The removed mass is everything strictly below the threshold: |0.5| + 0 of 4.5 in total.
        assert full.sigma == pytest.approx([0.5 / 4.5, 0.0])
    none = streamed_trim_statistics(tensor_stream([x]), num_tasks=2, numel=4, mask_rate=0.0)
    assert none.k == 0 and none.thresholds == [None, None] and none.sigma == [0.0, 0.0]


def test_negative_zero_and_subnormals_order_like_values() -> None:
    tiny = torch.finfo(torch.float32).tiny
    x = torch.tensor([[-0.0, tiny / 2, tiny, 1e-45, 0.0]])
    # Sorted magnitudes: 0, 0, 1e-45 (smallest subnormal), tiny/2, tiny.
    expected = [0.0, 0.0, 1e-45, tiny / 2, tiny]
    for strategy in ("auto", "radix"):
        for k, value in enumerate(expected, start=1):
            stats = streamed_trim_statistics(tensor_stream([x]), num_tasks=1, numel=5, mask_rate=k / 5, strategy=strategy)
            assert stats.k == k
            assert stats.thresholds[0].item() == torch.tensor(value, dtype=torch.float32).item()


def test_chunk_boundaries_do_not_change_the_result(monkeypatch) -> None:
    tensors = awkward_tensors(torch.float32, seed=3)
    stream, numel = tensor_stream(tensors), numel_of(tensors)
    whole = streamed_trim_statistics(stream, num_tasks=3, numel=numel, mask_rate=0.7, strategy="radix")
    monkeypatch.setattr(radix_select, "_COLUMN_CHUNK", 53)
    chunked = streamed_trim_statistics(stream, num_tasks=3, numel=numel, mask_rate=0.7, strategy="radix")
    assert all(torch.equal(a, b) for a, b in zip(whole.thresholds, chunked.thresholds))
    assert chunked.sigma == pytest.approx(whole.sigma, rel=1e-12)


def test_bad_arguments_are_refused() -> None:
    stream = tensor_stream([torch.ones(2, 3)])
    with pytest.raises(ValueError, match="mask_rate"):
        streamed_trim_statistics(stream, num_tasks=2, numel=3, mask_rate=1.5)
    with pytest.raises(ValueError, match="float32 or float64"):
        streamed_trim_statistics(stream, num_tasks=2, numel=3, mask_rate=0.5, dtype=torch.float16)
    with pytest.raises(ValueError, match="task rows"):
        streamed_trim_statistics(stream, num_tasks=3, numel=3, mask_rate=0.5)
    with pytest.raises(ValueError, match="expected numel=4"):
        streamed_trim_statistics(stream, num_tasks=2, numel=4, mask_rate=0.5)


def test_model_level_statistics_match_the_concatenation(monkeypatch) -> None:
    """Through `TaskVectors` (strided sample + full pass over real tensors), float32 and float64."""
    from neuroflow.merging import DictExperts, TaskVectors, resolve_routing

    from .helpers import random_model

    monkeypatch.setattr(select, "_SAMPLE_SIZE", 50)
    for dtype in (torch.float32, torch.float64):
        base, experts = random_model({"a": (30, 20), "b": (20,), "c": (7, 3, 2)}, experts=3, seed=8, dtype=dtype)
        tv = TaskVectors(base, DictExperts(experts), resolve_routing(base))
        stats = tv.trim_statistics(0.8)
        per_tensor = [torch.stack([e[n] - base[n] for e in experts]) for n in base]
        k, truth = concatenated_truth(per_tensor, 0.8)
        assert stats.k == k == math.floor(stats.numel * 0.8) and stats.numel == 30 * 20 + 20 + 42
        for t, (kth, sigma) in enumerate(truth):
            assert torch.equal(stats.thresholds[t], kth)
            assert stats.sigma[t] == pytest.approx(sigma, rel=1e-6)


def test_blocks_wider_than_float32_counts_are_exact(monkeypatch) -> None:
    # One in-memory tensor is one block: more entries below the bracket than float32 holds exactly
    # (2^24; the window pass counts them with a float 0/1 mask, summed in float64 for such blocks).
    # A regression net for wide blocks: float32 sums happen to round exactly on this input too.
    g = torch.Generator().manual_seed(3)
    x = torch.rand(1, (1 << 24) + (1 << 17) + 1, generator=g)
    monkeypatch.setattr(select, "radix_select", lambda *a: pytest.fail("the window select missed"))
    check_against_truth([x], 0.999, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # float64: the torch path on float32 blocks
def test_window_select_with_a_block_map_gives_the_same_bits(dtype) -> None:
    from concurrent.futures import ThreadPoolExecutor

    g = torch.Generator().manual_seed(5)
    tensors = [torch.randn(3, *shape, generator=g) for shape in [(300, 70), (5,), (1000, 130), (64,)]]
    numel = sum(t[0].numel() for t in tensors)
    stream = tensor_stream(tensors)

    def threaded(fn, stride):
        with ThreadPoolExecutor(max_workers=2) as pool:
            yield from pool.map(fn, stream(stride))

    plain = streamed_trim_statistics(stream, 3, numel, 0.8, dtype=dtype)
    mapped = streamed_trim_statistics(stream, 3, numel, 0.8, dtype=dtype, map_blocks=threaded)
    assert plain.k == mapped.k and plain.sigma == mapped.sigma
    assert all(torch.equal(a, b) for a, b in zip(plain.thresholds, mapped.thresholds))
    flat = torch.cat([t.reshape(3, -1) for t in tensors], dim=1).abs().to(dtype)
    assert torch.equal(mapped.thresholds[1], flat[1].kthvalue(plain.k).values)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kth_smallest_counts_few_distinct_values_and_agrees_with_kthvalue(dtype, monkeypatch) -> None:
    g = torch.Generator().manual_seed(3)
    monkeypatch.setattr(radix_select, "_COLUMN_CHUNK", 7_777)  # counted in 13 chunks, the last partial
    # Like the window's candidates: many values with few distinct bit patterns, spanning fewer
    # integers than there are values (the counting path) ...
    few = 1 + torch.randint(0, 3000, (100_000,), generator=g).to(dtype) * torch.finfo(dtype).eps
    # ... and spread-out values whose patterns span far more (introselect), with zeros, a
    # subnormal and inf mixed in.
    spread = torch.cat([torch.rand(5_000, generator=g, dtype=dtype) * 1e6, torch.zeros(7, dtype=dtype),
                        torch.tensor([torch.finfo(dtype).tiny / 4, math.inf], dtype=dtype)])
    partition = radix_select.np.partition
    for values, counted in ((few, True), (spread, False)):
        calls = []
        monkeypatch.setattr(radix_select.np, "partition", lambda *a: calls.append(1) or partition(*a))
        for rank in (1, 2, values.numel() // 3, values.numel() - 1, values.numel()):
            got = radix_select.kth_smallest(values, rank)
            assert got.dtype == dtype and got.dim() == 0
            assert torch.equal(got, values.kthvalue(rank).values), rank
        assert bool(calls) != counted


def test_kth_smallest_of_equal_values_and_bad_ranks() -> None:
    same = torch.full((10,), 0.5)
    assert radix_select.kth_smallest(same, 1).item() == 0.5 and radix_select.kth_smallest(same, 10).item() == 0.5
    assert radix_select.kth_smallest(torch.tensor([3.0, 1.0, 2.0]), 2).item() == 2.0
    for rank in (0, 4):
        with pytest.raises(ValueError, match="rank"):
            radix_select.kth_smallest(torch.tensor([3.0, 1.0, 2.0]), rank)
