"""The streamed global threshold equals `kthvalue` over the concatenation, exactly."""

from __future__ import annotations

import math

import pytest
import torch

from neuroflow.merging.select import streamed_trim_statistics


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mask_rate", [0.0, 0.001, 0.1, 0.5, 0.8, 0.9, 0.999, 1.0])
def test_threshold_equals_kthvalue_over_concatenation(dtype: torch.dtype, mask_rate: float) -> None:
    tensors = awkward_tensors(dtype)
    stats = streamed_trim_statistics(lambda: iter(tensors), num_tasks=3, mask_rate=mask_rate, dtype=dtype)
    k, truth = concatenated_truth(tensors, mask_rate)
    assert stats.k == k and stats.numel == 40 * 7 + 300 + 25 + 5
    for t, (kth, sigma) in enumerate(truth):
        if kth is None:
            assert stats.thresholds[t] is None
        else:
            assert stats.thresholds[t].dtype == dtype
            assert torch.equal(stats.thresholds[t], kth), (t, stats.thresholds[t], kth)
        assert stats.sigma[t] == pytest.approx(sigma, rel=1e-12, abs=1e-300)


def test_k_equal_to_p_selects_the_maximum_and_k_zero_keeps_all() -> None:
    x = torch.tensor([[0.5, -2.0, 2.0, 0.0], [-0.0, 0.0, 0.0, 0.0]])
    full = streamed_trim_statistics(lambda: [x], num_tasks=2, mask_rate=1.0)
    assert full.k == 4
    assert full.thresholds[0].item() == 2.0 and full.thresholds[1].item() == 0.0
    # The removed mass is everything strictly below the threshold: |0.5| + 0 of 4.5 in total.
    assert full.sigma == pytest.approx([0.5 / 4.5, 0.0])
    none = streamed_trim_statistics(lambda: [x], num_tasks=2, mask_rate=0.0)
    assert none.k == 0 and none.thresholds == [None, None] and none.sigma == [0.0, 0.0]


def test_negative_zero_and_subnormals_order_like_values() -> None:
    tiny = torch.finfo(torch.float32).tiny
    x = torch.tensor([[-0.0, tiny / 2, tiny, 1e-45, 0.0]])
    # Sorted magnitudes: 0, 0, 1e-45 (smallest subnormal), tiny/2, tiny.
    expected = [0.0, 0.0, 1e-45, tiny / 2, tiny]
    for k, value in enumerate(expected, start=1):
        stats = streamed_trim_statistics(lambda: [x], num_tasks=1, mask_rate=k / 5)
        assert stats.k == k
        assert stats.thresholds[0].item() == torch.tensor(value, dtype=torch.float32).item()


def test_chunk_boundaries_do_not_change_the_result(monkeypatch) -> None:
    import neuroflow.merging.select as select

    tensors = awkward_tensors(torch.float32, seed=3)
    whole = streamed_trim_statistics(lambda: iter(tensors), num_tasks=3, mask_rate=0.7)
    monkeypatch.setattr(select, "_COLUMN_CHUNK", 53)
    chunked = streamed_trim_statistics(lambda: iter(tensors), num_tasks=3, mask_rate=0.7)
    assert all(torch.equal(a, b) for a, b in zip(whole.thresholds, chunked.thresholds))
    assert chunked.sigma == pytest.approx(whole.sigma, rel=1e-12)


def test_bad_arguments_are_refused() -> None:
    x = torch.ones(2, 3)
    with pytest.raises(ValueError, match="mask_rate"):
        streamed_trim_statistics(lambda: [x], num_tasks=2, mask_rate=1.5)
    with pytest.raises(ValueError, match="float32 or float64"):
        streamed_trim_statistics(lambda: [x], num_tasks=2, mask_rate=0.5, dtype=torch.float16)
    with pytest.raises(ValueError, match="task rows"):
        streamed_trim_statistics(lambda: [x], num_tasks=3, mask_rate=0.5)
