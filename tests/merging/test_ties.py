"""TIES: hand-computed global vs per-tensor trims, sign conflicts, scaling."""

from __future__ import annotations

import pytest
import torch

from neuroflow.merging import TIES, merge, merge_state_dicts

BASE = {"a": torch.zeros(4, dtype=torch.float64), "b": torch.full((2,), 10.0, dtype=torch.float64)}
TAUS = [
    {"a": [4.0, -1.0, 0.5, 2.0], "b": [3.0, -0.1]},
    {"a": [-3.0, -2.0, 1.0, -0.2], "b": [0.3, 5.0]},
]
EXPERTS = [{n: BASE[n] + torch.tensor(v, dtype=torch.float64) for n, v in tau.items()} for tau in TAUS]


def test_global_scope_trims_over_all_tensors() -> None:
    # P = 6, k = 3: both tasks' 3rd smallest magnitude is 1.0, so b keeps only 3.0 and 5.0.
    out = merge_state_dicts(BASE, EXPERTS, TIES(mask_rate=0.5, scope="global"))
    assert torch.allclose(out["a"], torch.tensor([4.0, -1.5, 1.0, 2.0], dtype=torch.float64))
    assert torch.allclose(out["b"], torch.tensor([13.0, 15.0], dtype=torch.float64))


def test_tensor_scope_trims_each_tensor() -> None:
    # b alone: k = 1 keeps both entries of both tasks; column 0 averages 3.0 and 0.3.
    out = merge_state_dicts(BASE, EXPERTS, TIES(mask_rate=0.5, scope="tensor"))
    assert torch.allclose(out["a"], torch.tensor([4.0, -1.5, 1.0, 2.0], dtype=torch.float64))
    assert torch.allclose(out["b"], torch.tensor([11.65, 15.0], dtype=torch.float64))


def test_scaling_and_sign_conflict_without_trim() -> None:
    base = {"w": torch.zeros(3, dtype=torch.float64)}
    experts = [{"w": torch.tensor([1.0, 2.0, -3.0], dtype=torch.float64)}, {"w": torch.tensor([-1.0, 1.0, -1.0], dtype=torch.float64)}]
    out = merge_state_dicts(base, experts, TIES(mask_rate=0.0, scaling=2.0))
    # sums 0, 3, -4; the tie in column 0 has no majority, so only the negative entry counts.
    assert torch.allclose(out["w"], 2.0 * torch.tensor([-1.0, 1.5, -2.0], dtype=torch.float64))


def test_global_statistics_are_reported() -> None:
    info = merge(BASE, EXPERTS, TIES(mask_rate=0.5)).info
    assert info["method"] == "ties"
    assert info["hparams"] == {"mask_rate": 0.5, "scope": "global", "scaling": 1.0}
    assert info["statistics"]["trim"]["thresholds"] == [1.0, 1.0]


def test_bad_hyperparameters_name_the_flag() -> None:
    with pytest.raises(ValueError, match="scope"):
        TIES(scope="layer")
    with pytest.raises(ValueError, match="mask_rate"):
        TIES(mask_rate=-0.1)
