"""Fisher merging: equal Fishers average, one-hot Fishers pick, hand cases, floors, bad statistics."""

from __future__ import annotations

import json

import pytest
import torch

from neuroflow.merging import DictExperts, FisherMerging, MergeInputError, WeightAveraging, merge, merge_state_dicts
from neuroflow.merging.fisher import fisher_average

from .helpers import SMALL_SHAPES, random_model

D = torch.float64


def with_fishers(experts, fishers, names=None) -> DictExperts:
    return DictExperts(experts, names=names, statistics=[{"fisher": f} for f in fishers])


def test_equal_fishers_are_weight_averaging() -> None:
    base, experts = random_model(SMALL_SHAPES, experts=3, seed=0)
    g = torch.Generator().manual_seed(1)
    shared = {n: torch.rand(w.shape, generator=g, dtype=D) + 0.1 for n, w in base.items()}
    out = merge_state_dicts(base, with_fishers(experts, [shared] * 3), FisherMerging())
    averaged = merge_state_dicts(base, experts, WeightAveraging())
    for name in base:
        assert torch.allclose(out[name], averaged[name], atol=1e-12), name


def test_one_hot_fishers_pick_the_expert() -> None:
    base, experts = random_model(SMALL_SHAPES, experts=3, seed=2)
    g = torch.Generator().manual_seed(3)
    choice = {n: torch.randint(0, 3, w.shape, generator=g) for n, w in base.items()}
    fishers = [{n: (c == i).to(D) for n, c in choice.items()} for i in range(3)]
    picked = {n: torch.stack([e[n] for e in experts]).gather(0, c[None]).squeeze(0) for n, c in choice.items()}
    exact = merge_state_dicts(base, with_fishers(experts, fishers), FisherMerging(eps=0.0))
    floored = merge_state_dicts(base, with_fishers(experts, fishers), FisherMerging())  # 1e-8 on the others
    for name in base:
        assert torch.allclose(exact[name], picked[name], atol=1e-14), name
        assert torch.allclose(floored[name], picked[name], atol=1e-7), name


def test_weighted_average_by_hand() -> None:
    base = {"w": torch.tensor([10.0, 10.0], dtype=D)}
    experts = [{"w": torch.tensor([10.0, 14.0], dtype=D)}, {"w": torch.tensor([18.0, 10.0], dtype=D)}]
    fishers = [{"w": torch.tensor([1.0, 3.0], dtype=D)}, {"w": torch.tensor([3.0, 1.0], dtype=D)}]
    # theta = (F1 theta1 + F2 theta2) / (F1 + F2) = ((10 + 54) / 4, (42 + 10) / 4)
    out = merge_state_dicts(base, with_fishers(experts, fishers), FisherMerging())
    assert torch.allclose(out["w"], torch.tensor([16.0, 13.0], dtype=D), atol=1e-12)
    # only the ratios matter (away from the floor)
    scaled = [{"w": 1e3 * f["w"]} for f in fishers]
    assert torch.allclose(merge_state_dicts(base, with_fishers(experts, scaled), FisherMerging())["w"], out["w"], atol=1e-12)


def test_zero_fishers_fall_back_to_the_plain_average() -> None:
    params = torch.tensor([[1.0, 2.0, 5.0], [3.0, 6.0, 1.0]], dtype=D)
    fishers = torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, 0.0]], dtype=D)
    for eps in (1e-8, 0.0):
        merged = fisher_average(params, fishers, eps)
        assert torch.allclose(merged[:2], torch.tensor([2.0, 4.0], dtype=D), atol=1e-15)
        assert torch.allclose(merged[2], torch.tensor(5.0, dtype=D), atol=1e-7)
    assert torch.isfinite(fisher_average(params.float(), fishers.float(), 0.0)).all()
    with pytest.raises(ValueError, match="shape"):
        fisher_average(params, fishers[:, :2])


def test_tensors_without_fishers_are_averaged_and_reported() -> None:
    base, experts = random_model(SMALL_SHAPES, experts=2, seed=4)
    fishers = [{n: torch.ones(w.shape, dtype=D) for n, w in base.items() if n != "norm.weight"} for _ in range(2)]
    result = merge(base, with_fishers(experts, fishers), FisherMerging())
    averaged = merge_state_dicts(base, experts, WeightAveraging())
    assert torch.allclose(result.state_dict["norm.weight"], averaged["norm.weight"], atol=1e-12)
    json.dumps(result.info)
    assert result.info["statistics"] == {"fishers": {"kind": "fisher", "experts": 2}, "averaged_tensors": 1}
    assert result.info["hparams"] == {"eps": 1e-8} and FisherMerging.uses_data and FisherMerging.statistics_kind == "fisher"


def test_float32_and_columns_routes() -> None:
    base, experts = random_model(SMALL_SHAPES, experts=2, seed=5, dtype=torch.float32)
    g = torch.Generator().manual_seed(6)
    fishers = [{n: torch.rand(w.shape, generator=g) for n, w in base.items()} for _ in range(2)]
    routing = {"lin.weight": "neuron_columns"}  # element-wise: the route does not matter
    out = merge_state_dicts(base, with_fishers(experts, fishers), FisherMerging(), routing=routing)
    for name in base:
        f = torch.stack([fs[name].double() for fs in fishers]).clamp(min=1e-8)
        p = torch.stack([e[name].double() for e in experts])
        assert out[name].dtype == torch.float32
        assert torch.allclose(out[name].double(), (f * p).sum(0) / f.sum(0), atol=1e-5), name


def test_missing_statistics_name_the_expert_and_the_command() -> None:
    base, experts = random_model(SMALL_SHAPES, experts=2, seed=7)
    with pytest.raises(MergeInputError, match=r"expert 0 has none; statistics must be computed first with `python -m neuroflow stats`"):
        merge_state_dicts(base, experts, FisherMerging())
    ones = {n: torch.ones(w.shape, dtype=D) for n, w in base.items()}
    source = DictExperts(experts, names=["sst2", "trec"], statistics=[{"fisher": ones}, {"regmean": {}}])
    with pytest.raises(MergeInputError, match=r"expert 1 \(trec\) has none.*python -m neuroflow stats"):
        merge_state_dicts(base, source, FisherMerging())
    partial = {n: t for n, t in ones.items() if n != "lin.bias"}
    with pytest.raises(MergeInputError, match=r"expert 1 \(trec\) has no 'fisher' statistic for tensor 'lin.bias'"):
        merge_state_dicts(base, with_fishers(experts, [ones, partial], names=["sst2", "trec"]), FisherMerging())


def test_bad_statistics_name_the_tensor_and_the_expert() -> None:
    base, experts = random_model(SMALL_SHAPES, experts=2, seed=8)
    ones = {n: torch.ones(w.shape, dtype=D) for n, w in base.items()}
    with pytest.raises(MergeInputError, match=r"tensor 'lin.weight' of expert 1 has shape \(5, 6\), expected \(6, 5\)"):
        merge_state_dicts(base, with_fishers(experts, [ones, {**ones, "lin.weight": torch.ones(5, 6, dtype=D)}]), FisherMerging())
    negative = {**ones, "lin.bias": -torch.ones(6, dtype=D)}
    with pytest.raises(MergeInputError, match=r"tensor 'lin.bias' of expert 0 contains negative values"):
        merge_state_dicts(base, with_fishers(experts, [negative, ones]), FisherMerging())
    infinite = {**ones, "emb.weight": torch.full((12, 5), float("inf"), dtype=D)}
    with pytest.raises(MergeInputError, match=r"tensor 'emb.weight' of expert 1 contains NaN or Inf"):
        merge_state_dicts(base, with_fishers(experts, [ones, infinite]), FisherMerging())
    for bad in (-1.0, float("nan"), float("inf"), "1e-8", None):
        with pytest.raises(ValueError, match="FisherMerging: eps must be"):
            FisherMerging(eps=bad)
