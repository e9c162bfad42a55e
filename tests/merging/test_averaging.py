"""Weight averaging: the mean of the experts' weights."""

from __future__ import annotations

import torch

from neuroflow.merging import WeightAveraging, merge_state_dicts


def test_mean_of_expert_weights() -> None:
    base = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor([7.0])}
    experts = [{"w": torch.tensor([2.0, 1.0]), "n": torch.tensor([1.0])}, {"w": torch.tensor([4.0, 2.5]), "n": torch.tensor([2.0])}]
    out = merge_state_dicts(base, experts, WeightAveraging())
    assert torch.allclose(out["w"], torch.tensor([3.0, 1.75]))
    assert torch.allclose(out["n"], torch.tensor([1.5]))
    assert WeightAveraging().hparams() == {} and WeightAveraging.name == "averaging"
