"""DARE: seeded drops keyed by (seed, expert, tensor name), rescaling, then TA or TIES."""

from __future__ import annotations

import pytest
import torch

from neuroflow.merging import DARE, TIES, merge_state_dicts
from neuroflow.merging.dare import keep_mask


def ones_model(names: list[str], n: int = 20000, experts: int = 2):
    base = {name: torch.zeros(n) for name in names}
    return base, [{name: torch.ones(n) for name in names} for _ in range(experts)]


def test_kept_entries_are_rescaled_and_the_drop_rate_holds() -> None:
    base, experts = ones_model(["w"], experts=1)
    out = merge_state_dicts(base, experts, DARE(drop_rate=0.9, seed=1))["w"]
    kept_values = out[out != 0]
    assert torch.allclose(kept_values, torch.full_like(kept_values, 10.0))
    kept = (out != 0).float().mean().item()
    assert abs(kept - 0.1) < 0.01  # 20000 Bernoulli(0.1) draws: sd 0.002


def test_same_seed_same_result_other_seed_differs() -> None:
    base, experts = ones_model(["w", "v"], n=500)
    a = merge_state_dicts(base, experts, DARE(drop_rate=0.5, seed=3))
    b = merge_state_dicts(base, experts, DARE(drop_rate=0.5, seed=3))
    c = merge_state_dicts(base, experts, DARE(drop_rate=0.5, seed=4))
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not torch.equal(a["w"], c["w"])
    # Different tensors and different experts get different masks.
    assert not torch.equal(keep_mask(torch.Size([500]), 0.5, 3, 0, "w"), keep_mask(torch.Size([500]), 0.5, 3, 0, "v"))
    assert not torch.equal(keep_mask(torch.Size([500]), 0.5, 3, 0, "w"), keep_mask(torch.Size([500]), 0.5, 3, 1, "w"))


def test_result_does_not_depend_on_tensor_order() -> None:
    base, experts = ones_model(["w", "v", "u"], n=300)
    forward = merge_state_dicts(base, experts, DARE(drop_rate=0.7, seed=0))
    reverse_base = dict(reversed(list(base.items())))
    backward = merge_state_dicts(reverse_base, experts, DARE(drop_rate=0.7, seed=0))
    alone = merge_state_dicts({"v": base["v"]}, [{"v": e["v"]} for e in experts], DARE(drop_rate=0.7, seed=0))
    assert all(torch.equal(forward[n], backward[n]) for n in forward)
    assert torch.equal(forward["v"], alone["v"])


def test_task_arithmetic_sum_by_hand() -> None:
    base = {"w": torch.zeros(400, dtype=torch.float64)}
    experts = [{"w": torch.full((400,), 1.0, dtype=torch.float64)}, {"w": torch.full((400,), -3.0, dtype=torch.float64)}]
    out = merge_state_dicts(base, experts, DARE(drop_rate=0.5, seed=7, scaling=0.5))["w"]
    k0 = keep_mask(torch.Size([400]), 0.5, 7, 0, "w").double()
    k1 = keep_mask(torch.Size([400]), 0.5, 7, 1, "w").double()
    assert torch.allclose(out, 0.5 * (2.0 * k0 - 6.0 * k1))


def test_then_ties_elects_signs_without_trimming() -> None:
    base = {"w": torch.zeros(3, dtype=torch.float64)}
    experts = [{"w": torch.tensor([1.0, 2.0, -3.0], dtype=torch.float64)}, {"w": torch.tensor([-1.0, 1.0, -1.0], dtype=torch.float64)}]
    dare = merge_state_dicts(base, experts, DARE(drop_rate=0.0, then="ties"))["w"]
    assert torch.allclose(dare, merge_state_dicts(base, experts, TIES(mask_rate=0.0))["w"])
    assert torch.allclose(dare, torch.tensor([-1.0, 1.5, -2.0], dtype=torch.float64))
    # With drops: the rescaled survivors are what TIES sees.
    out = merge_state_dicts({"w": torch.zeros(1000)}, [{"w": torch.ones(1000)}, {"w": -torch.ones(1000)}], DARE(0.5, seed=2, then="ties"))["w"]
    k0 = keep_mask(torch.Size([1000]), 0.5, 2, 0, "w")
    k1 = keep_mask(torch.Size([1000]), 0.5, 2, 1, "w")
    # Elected sign is + only where expert 0 kept and expert 1 dropped (sum 2), etc.
    expected = torch.where(k0 & ~k1, 2.0, 0.0) + torch.where(~k0 & k1, -2.0, 0.0)
    # Both kept: the sum is 0 and the tensor-wide fallback decides; both signs give magnitude 2.
    both = k0 & k1
    assert torch.allclose(out[~both], expected[~both])
    assert torch.allclose(out[both].abs(), torch.full_like(out[both], 2.0))


def test_bad_hyperparameters_name_the_flag() -> None:
    with pytest.raises(ValueError, match="drop_rate"):
        DARE(drop_rate=1.0)
    with pytest.raises(ValueError, match="then"):
        DARE(then="average")
