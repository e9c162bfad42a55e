"""RegMean: the least-squares closed form, the off-diagonal scaling, routes, fallbacks, bad statistics."""

from __future__ import annotations

import json

import pytest
import torch
from jsonargparse import ArgumentParser
from safetensors.torch import save_file

from neuroflow.merging import (
    DictExperts,
    MergeInputError,
    MergeMethod,
    RegMean,
    TaskArithmetic,
    WeightAveraging,
    merge,
    merge_state_dicts,
)
from neuroflow.merging.regmean import regmean_solve, regularize_grams
from neuroflow.merging.sources import SafetensorsFile

D = torch.float64
OUT, IN = 4, 5


def layer_case(seed: int = 0, examples: tuple[int, ...] = (7, 9, 6)):
    """One linear layer (weight + bias) with three experts and their inputs X_i."""
    g = torch.Generator().manual_seed(seed)
    base = {"lin.weight": torch.randn(OUT, IN, generator=g, dtype=D), "lin.bias": torch.randn(OUT, generator=g, dtype=D)}
    experts = [{n: w + torch.randn(w.shape, generator=g, dtype=D) for n, w in base.items()} for _ in examples]
    inputs = [torch.randn(n, IN, generator=g, dtype=D) for n in examples]
    return base, experts, inputs


def with_grams(experts, inputs, names=None) -> DictExperts:
    return DictExperts(experts, names=names, statistics=[{"regmean": {"lin.weight": x.T @ x}} for x in inputs])


def test_alpha_one_is_the_least_squares_merge_of_the_stacked_inputs() -> None:
    base, experts, inputs = layer_case()
    out = merge_state_dicts(base, with_grams(experts, inputs), RegMean(alpha=1.0))
    # W* = argmin_W sum_i ||X_i W^T - X_i W_i^T||^2: least squares on the stacked inputs and targets.
    stacked = torch.cat(inputs)
    targets = torch.cat([x @ e["lin.weight"].T for x, e in zip(inputs, experts)])
    expected = torch.linalg.lstsq(stacked, targets).solution.T
    assert torch.allclose(out["lin.weight"], expected, atol=1e-10)
    # the bias has no Gram: the default fallback averages it
    assert torch.allclose(out["lin.bias"], torch.stack([e["lin.bias"] for e in experts]).mean(0), atol=1e-12)


def test_alpha_zero_is_a_per_input_feature_weighted_average() -> None:
    base, experts, inputs = layer_case(seed=1)
    out = merge_state_dicts(base, with_grams(experts, inputs), RegMean(alpha=0.0))
    weights = torch.stack([(x * x).sum(0) for x in inputs])  # diag(G_i), (T, in)
    w = torch.stack([e["lin.weight"] for e in experts])  # (T, out, in)
    expected = (weights[:, None, :] * w).sum(0) / weights.sum(0)
    assert torch.allclose(out["lin.weight"], expected, atol=1e-12)


def test_off_diagonal_scaling_by_hand() -> None:
    grams = torch.tensor([[[4.0, 2.0], [2.0, 3.0]]], dtype=D)
    assert torch.equal(regularize_grams(grams, 0.5), torch.tensor([[[4.0, 1.0], [1.0, 3.0]]], dtype=D))
    # Two experts, one output, two inputs: W = (G1~ + G2~)^-1 (G1~ w1 + G2~ w2) with alpha = 0.5.
    g1, g2 = torch.tensor([[2.0, 2.0], [2.0, 4.0]], dtype=D), torch.tensor([[2.0, 0.0], [0.0, 2.0]], dtype=D)
    w1, w2 = torch.tensor([[1.0, 0.0]], dtype=D), torch.tensor([[0.0, 1.0]], dtype=D)
    # G~ sum = [[4, 1], [1, 6]], rhs = [[2], [1]] + [[0], [2]] = [[2], [3]] -> W^T = [[9], [10]] / 23
    merged = regmean_solve(torch.stack([w1, w2]), torch.stack([g1, g2]), alpha=0.5)
    assert torch.allclose(merged, torch.tensor([[9.0, 10.0]], dtype=D) / 23, atol=1e-15)


def test_solve_accumulates_grams_one_at_a_time() -> None:
    _, experts, inputs = layer_case(seed=7)
    w = torch.stack([e["lin.weight"] for e in experts])
    grams = [x.T @ x for x in inputs]
    # the formula with each Gram regularised first, and everything stacked
    g = regularize_grams(torch.stack(grams), 0.7)
    expected = torch.linalg.solve(g.sum(0), torch.einsum("tij,toj->io", g, w)).T
    assert torch.allclose(regmean_solve(w, torch.stack(grams), 0.7), expected, atol=1e-12)
    assert torch.allclose(regmean_solve(w, iter(grams), 0.7), expected, atol=1e-12)
    with pytest.raises(ValueError, match="got 2 Gram matrices for 3 experts"):
        regmean_solve(w, grams[:2], 0.7)
    with pytest.raises(ValueError, match=r"a Gram of shape \(4, 4\) for a weight with 5 inputs"):
        regmean_solve(w, [torch.eye(4, dtype=D)] * 3, 0.7)


def test_conv1d_columns_route_uses_the_input_side() -> None:
    base, experts, inputs = layer_case(seed=2)
    rows = merge_state_dicts(base, with_grams(experts, inputs), RegMean())
    t_base = {"lin.weight": base["lin.weight"].T.contiguous(), "lin.bias": base["lin.bias"]}
    t_experts = [{"lin.weight": e["lin.weight"].T.contiguous(), "lin.bias": e["lin.bias"]} for e in experts]
    cols = merge_state_dicts(t_base, with_grams(t_experts, inputs), RegMean(), routing={"lin.weight": "neuron_columns"})
    assert torch.allclose(cols["lin.weight"], rows["lin.weight"].T, atol=1e-12)


def test_inputs_no_expert_saw_keep_the_pretrained_weights() -> None:
    base, experts, inputs = layer_case(seed=3)
    for x in inputs:
        x[:, 2] = 0.0  # feature 2 is never active: sum of Grams is singular
    for alpha in (1.0, 0.9):
        out = merge_state_dicts(base, with_grams(experts, inputs), RegMean(alpha=alpha))
        assert torch.allclose(out["lin.weight"][:, 2], base["lin.weight"][:, 2], atol=1e-10)
        assert torch.isfinite(out["lin.weight"]).all()


def test_float32_weights_and_grams() -> None:
    base, experts, inputs = layer_case(seed=4)
    f32 = lambda d: {k: v.float() for k, v in d.items()}  # noqa: E731
    out = merge_state_dicts(f32(base), with_grams([f32(e) for e in experts], [x.float() for x in inputs]), RegMean(alpha=1.0))
    stacked = torch.cat(inputs)
    targets = torch.cat([x @ e["lin.weight"].T for x, e in zip(inputs, experts)])
    assert out["lin.weight"].dtype == torch.float32
    assert torch.allclose(out["lin.weight"].double(), torch.linalg.lstsq(stacked, targets).solution.T, atol=1e-5)


def test_fallback_merges_the_other_tensors_and_round_trips() -> None:
    base, experts, inputs = layer_case(seed=5)
    method = RegMean(alpha=1.0, fallback=TaskArithmetic(scaling=0.5))
    out = merge_state_dicts(base, with_grams(experts, inputs), method)
    assert torch.allclose(out["lin.bias"], base["lin.bias"] + 0.5 * sum(e["lin.bias"] - base["lin.bias"] for e in experts), atol=1e-12)
    fallback_config = {"class_path": "neuroflow.merging.task_arithmetic.TaskArithmetic", "init_args": {"scaling": 0.5}}
    assert method.hparams() == {"alpha": 1.0, "fallback": fallback_config}
    copy = method.with_params(alpha=0.5)
    assert isinstance(copy.fallback, TaskArithmetic) and copy.fallback.scaling == 0.5 and copy.alpha == 0.5
    info = merge(base, with_grams(experts, inputs), method).info
    json.dumps(info)  # no Gram matrix (nor a method object) in the merge card
    assert info["statistics"]["grams"] == {"kind": "regmean", "experts": 3} and info["statistics"]["regmean_tensors"] == 1
    assert RegMean.uses_data and RegMean.statistics_kind == "regmean" and not WeightAveraging.uses_data


def test_nested_fallback_from_a_config() -> None:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(MergeMethod, "method")
    config = '{"class_path": "RegMean", "init_args": {"alpha": 0.8, "fallback": {"class_path": "neuroflow.merging.TIES", "init_args": {"mask_rate": 0.5}}}}'
    method = parser.instantiate(parser.parse_args(["--method", config])).method
    assert isinstance(method, RegMean) and method.alpha == 0.8 and method.fallback.mask_rate == 0.5
    assert RegMean(fallback={"class_path": "TaskArithmetic", "init_args": {"scaling": 0.2}}).fallback.scaling == 0.2
    for bad in ("ties", {"init_args": {}}, 0.5, {"class_path": "no.such.Method"}, {"class_path": "torch.Tensor"}):
        with pytest.raises(ValueError, match="RegMean: fallback must be a MergeMethod"):
            RegMean(fallback=bad)
    for bad in (1.5, -0.1, float("nan"), "0.9", True, None):
        with pytest.raises(ValueError, match="RegMean: alpha must be"):
            RegMean(alpha=bad)


def test_empty_weights_merge_to_empty() -> None:
    base = {"a.weight": torch.empty(0, 3, dtype=D), "b.weight": torch.empty(3, 0, dtype=D), "lin.weight": torch.ones(2, 3, dtype=D)}
    experts = [{k: v + 1.0 for k, v in base.items()} for _ in range(2)]
    grams = {"a.weight": torch.eye(3, dtype=D), "b.weight": torch.empty(0, 0, dtype=D), "lin.weight": torch.eye(3, dtype=D)}
    out = merge_state_dicts(base, DictExperts(experts, statistics=[{"regmean": grams}] * 2), RegMean())
    assert out["a.weight"].shape == (0, 3) and out["b.weight"].shape == (3, 0)
    assert torch.allclose(out["lin.weight"], torch.full((2, 3), 2.0, dtype=D))


def test_lazy_statistics_from_safetensors(tmp_path) -> None:
    base, experts, inputs = layer_case(seed=6)
    paths = []
    for i, x in enumerate(inputs):
        paths.append(tmp_path / f"stats{i}.safetensors")
        save_file({"lin.weight": x.T @ x}, str(paths[i]))

    class FileStatistics(DictExperts):
        def statistics(self, i, kind):
            return SafetensorsFile(paths[i]) if kind == "regmean" else None

    out = merge_state_dicts(base, FileStatistics(experts), RegMean())
    assert torch.allclose(out["lin.weight"], merge_state_dicts(base, with_grams(experts, inputs), RegMean())["lin.weight"])


def test_missing_statistics_name_the_expert_and_the_command() -> None:
    base, experts, inputs = layer_case()
    with pytest.raises(MergeInputError, match=r"expert 0 has none; statistics must be computed first with `python -m neuroflow stats`"):
        merge_state_dicts(base, experts, RegMean())
    source = DictExperts(experts, names=["sst2", "trec", "agnews"], statistics=[{"regmean": {"lin.weight": inputs[0].T @ inputs[0]}}, {}, {}])
    with pytest.raises(MergeInputError, match=r"expert 1 \(trec\) has none.*python -m neuroflow stats"):
        merge_state_dicts(base, source, RegMean())
    partial = [{"regmean": {"lin.weight": x.T @ x}} for x in inputs]
    partial[2]["regmean"] = {}
    with pytest.raises(MergeInputError, match=r"expert 2 \(agnews\) has no 'regmean' statistic for tensor 'lin.weight'"):
        merge_state_dicts(base, DictExperts(experts, names=["sst2", "trec", "agnews"], statistics=partial), RegMean())


def test_bad_statistics_name_the_tensor_and_the_expert() -> None:
    base, experts, inputs = layer_case()
    stats = [{"regmean": {"lin.weight": x.T @ x}} for x in inputs]
    stats[1]["regmean"]["lin.weight"] = torch.eye(OUT, dtype=D)  # (out, out) instead of (in, in)
    with pytest.raises(MergeInputError, match=r"tensor 'lin.weight' of expert 1 has shape \(4, 4\), expected \(5, 5\)"):
        merge_state_dicts(base, DictExperts(experts, statistics=stats), RegMean())
    stats[1]["regmean"]["lin.weight"] = torch.full((IN, IN), float("nan"), dtype=D)
    with pytest.raises(MergeInputError, match=r"tensor 'lin.weight' of expert 1 contains NaN"):
        merge_state_dicts(base, DictExperts(experts, statistics=stats), RegMean())
    with pytest.raises(ValueError, match="statistics for 2 experts"):
        DictExperts(experts, statistics=stats[:2])
