"""The shared pure steps: trim, sign election with the spec's tie fallback, disjoint mean."""

from __future__ import annotations

import pytest
import torch

from neuroflow.merging import steps
from neuroflow.merging.steps import (
    disjoint_mean,
    elect_signs,
    kth_index,
    tensor_threshold,
    ties_merge,
    trim_tasks_,
)


def t(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def test_trim_keeps_ties_at_the_threshold() -> None:
    x = torch.tensor([[0.5, -1.0, 1.0, -0.2, 2.0]])
    assert torch.equal(trim_tasks_(x, [torch.tensor(1.0)]), torch.tensor([[0.0, -1.0, 1.0, 0.0, 2.0]]))
    y = torch.tensor([[0.5, -1.0]])
    assert torch.equal(trim_tasks_(y, [None]), torch.tensor([[0.5, -1.0]]))


def test_tensor_threshold_is_kthvalue_and_zero_rate_keeps_all() -> None:
    x = torch.tensor([[3.0, -1.0], [0.5, -2.0]])
    assert tensor_threshold(x, 0.5).item() == 1.0  # k = 2 of |x| = 0.5, 1, 2, 3
    assert tensor_threshold(x, 0.0) is None
    assert tensor_threshold(x, 1.0).item() == 3.0
    assert kth_index(10, 0.29) == 2 and kth_index(10, 1.0) == 10 and kth_index(0, 0.8) == 0


def test_trim_tasks_in_place_per_task() -> None:
    x = t([1, -2, 3], [-4, 5, -0.5])
    out = trim_tasks_(x, [torch.tensor(2.0, dtype=torch.float64), None])
    assert out is x
    assert torch.equal(x, t([0, -2, 3], [-4, 5, -0.5]))
    z = t([[1, -2], [3, 0.5]], [[-4, 5], [-0.5, 6]])
    trim_tasks_(z, [2.0, torch.tensor(5.0, dtype=torch.float64)])
    assert torch.equal(z, t([[0, -2], [3, 0]], [[0, 5], [0, 6]]))


def test_trim_compares_exactly_against_a_wider_threshold() -> None:
    # 1 + 2^-30 is not a float32: the float32 entry 1.0 is below it and must be trimmed.
    x = torch.tensor([[1.0, 2.0]])
    trim_tasks_(x, [torch.tensor(1.0 + 2.0**-30, dtype=torch.float64)])
    assert torch.equal(x, torch.tensor([[0.0, 2.0]]))


def test_sign_election_by_mass_and_disjoint_mean() -> None:
    x = t([1, 2, -3], [-3, 1, -1], [0, 4, 2])
    # sums: -2, 7, -2 -> signs -, +, -
    assert torch.equal(elect_signs(x), t(-1, 1, -1))
    assert torch.allclose(ties_merge(x), t(-3, (2 + 1 + 4) / 3, (-3 - 1) / 2))


def test_tie_falls_back_to_the_group_majority() -> None:
    # Column 0 sums to 0; the other signs sum to +2, so column 0 keeps its positive entries.
    x = t([1, 2, 3], [-1, 1, -1])
    assert torch.equal(elect_signs(x), t(1, 1, 1))
    assert torch.allclose(ties_merge(x), t(1, 1.5, 3))


def test_tie_with_tied_majority_keeps_only_negative_entries() -> None:
    # Column 0 sums to 0 and the other signs cancel (+1 - 1): sign 0 keeps only negatives.
    x = t([1, 2, -3], [-1, 1, -1])
    assert torch.equal(elect_signs(x), t(0, 1, -1))
    assert torch.allclose(ties_merge(x), t(-1, 1.5, -2))


def test_grouped_fallback_is_per_group() -> None:
    # Two groups (rows of the last-but-task dims): group 0 majority +, group 1 majority -.
    x = torch.tensor([[[1.0, 2.0, 1.0], [1.0, -2.0, -1.0]], [[-1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]]])
    signs = elect_signs(x, group_dim=2)
    assert torch.equal(signs, torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]]))
    assert torch.allclose(disjoint_mean(x, signs), torch.tensor([[1.0, 1.5, 1.0], [-1.0, -1.5, -1.0]]))


def test_zeros_never_count_in_the_mean() -> None:
    x = t([0, 0], [4, 0], [2, 0])
    assert torch.allclose(ties_merge(x), t(3, 0))


def _whole_tensor_ties(x: torch.Tensor, thresholds) -> torch.Tensor:
    """The unblocked composition the blocked `ties_merge` must reproduce bit for bit."""
    return disjoint_mean(x, elect_signs(trim_tasks_(x, thresholds)))


@pytest.mark.parametrize("fallback", [1.0, -1.0, 0.0])
def test_blocked_ties_merge_equals_the_whole_tensor_steps(fallback: float) -> None:
    # Several blocks (and a ragged last one) with exact cancellations (+a, -a) whose sign comes
    # from the tensor-wide fallback, which the blocks only know after the first sweep.
    g = torch.Generator().manual_seed(0)
    half = (3 * steps._BLOCK_COLUMNS + 126) // 2
    first = torch.randn(3, half, generator=g).abs()
    first[1, ::5] = -first[0, ::5]  # exact cancellation: sum 0, some entries nonzero
    first[2, ::5] = 0.0
    # +1 / -1: most columns lean one way; 0: the second half mirrors the first exactly.
    second = -first if fallback == 0.0 else first * fallback
    flat = torch.cat([first * (1.0 if fallback >= 0 else -1.0), second], dim=1)
    x = flat.reshape(3, -1, 6)
    thresholds = [torch.tensor(0.3), torch.tensor(0.5), torch.tensor(0.1)]
    trimmed = trim_tasks_(x.clone(), thresholds)
    total = trimmed.sum(0)
    assert ((total == 0) & (trimmed != 0).any(0)).any()
    assert torch.sign(torch.sign(total).sum()).item() == fallback
    expected = _whole_tensor_ties(x.clone(), thresholds)
    got = ties_merge(x.clone(), thresholds=thresholds)
    assert got.shape == x.shape[1:]
    assert torch.equal(got, expected)


def test_blocked_ties_merge_with_a_task_kept_whole_and_without_trim() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 2 * steps._BLOCK_COLUMNS + 5, generator=g)
    for thresholds in ([None, torch.tensor(0.7), None, torch.tensor(1.1)], [None] * 4, None):
        expected = _whole_tensor_ties(x.clone(), thresholds or [None] * 4)
        assert torch.equal(ties_merge(x.clone(), thresholds=thresholds), expected)


def test_scale_is_in_place_and_skips_a_scaling_of_one() -> None:
    from neuroflow.merging.steps import scale_

    x = torch.tensor([1.5, -0.0, 3.0])
    assert scale_(x, 1.0) is x and torch.equal(x, torch.tensor([1.5, -0.0, 3.0]))
    y = scale_(x, 0.5)
    assert y.data_ptr() == x.data_ptr()
    assert torch.equal(y, torch.tensor([0.75, -0.0, 1.5]))
