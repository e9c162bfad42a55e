"""NeuroMerging properties, modes and precision, beyond the reference vectors."""

from __future__ import annotations

import pytest
import torch

from neuroflow.merging import NeuroMerging, TaskVectors, DictExperts, merge, merge_state_dicts, neuron_merge, resolve_routing
from neuroflow.merging.neuromerging import merge_orthogonal
from neuroflow.merging.steps import trim_tasks_

from .helpers import SMALL_SHAPES, load_benchmark, random_model


def trimmed_task_vectors(base, experts, mask_rate):
    tv = TaskVectors(base, DictExperts(experts), resolve_routing(base))
    stats = tv.trim_statistics(mask_rate)
    return {name: trim_tasks_(tv.stack(name), stats.thresholds) for name in tv.names}, stats


def test_output_rows_are_orthogonal_to_base_rows() -> None:
    base, experts = random_model(SMALL_SHAPES, experts=4, seed=1)
    out = merge_state_dicts(base, experts, NeuroMerging(mask_rate=0.6, lambda_1=0.0))
    for name in ("emb.weight", "lin.weight"):
        delta = out[name] - base[name]
        assert delta.abs().max() > 1e-3  # something was merged
        cosine = (delta * base[name]).sum(-1) / (delta.norm(dim=-1) * base[name].norm(dim=-1))
        assert cosine.abs().max() < 1e-12, name


def test_single_expert_gives_its_trimmed_orthogonal_part() -> None:
    base, experts = random_model(SMALL_SHAPES, experts=1, seed=2)
    result = merge(base, experts, NeuroMerging(mask_rate=0.5))
    lam = result.info["statistics"]["lambda_2"]
    trimmed, stats = trimmed_task_vectors(base, experts, 0.5)
    assert lam == pytest.approx(1.0 / (1.0 - stats.sigma[0])) and lam > 1.0
    for name, tau in trimmed.items():
        if base[name].dim() == 2:
            w0 = base[name]
            s = (tau[0] * w0).sum(-1, keepdim=True) / (w0 * w0).sum(-1, keepdim=True)
            expected = lam * (tau[0] - s * w0)
        else:
            expected = lam * tau[0]
        assert torch.allclose(result.state_dict[name] - base[name], expected, atol=1e-12), name


def test_result_does_not_depend_on_expert_order() -> None:
    base, experts = random_model(SMALL_SHAPES, experts=5, seed=3)
    method = NeuroMerging(mask_rate=0.7, lambda_1=0.4)
    forward = merge_state_dicts(base, experts, method)
    backward = merge_state_dicts(base, [experts[i] for i in (3, 0, 4, 2, 1)], method)
    for name in forward:
        assert torch.allclose(forward[name], backward[name], rtol=0, atol=1e-12), name


def test_zero_base_rows_give_no_nan() -> None:
    base, experts = random_model(SMALL_SHAPES, experts=3, seed=4)
    base["lin.weight"][2] = 0.0
    out = merge_state_dicts(base, experts, NeuroMerging(mask_rate=0.3, lambda_1=1.0))
    assert all(torch.isfinite(t).all() for t in out.values())
    # With no base direction the whole task row is orthogonal, and the parallel part is zero.
    trimmed, _ = trimmed_task_vectors(base, experts, 0.3)
    par, orth = neuron_merge(base["lin.weight"], trimmed["lin.weight"])
    assert torch.equal(par[2], torch.zeros(5, dtype=torch.float64))
    s, _ = merge_orthogonal(base["lin.weight"], trimmed["lin.weight"])
    assert torch.equal(s[:, 2], torch.zeros(3, dtype=torch.float64))
    assert orth[2].abs().max() > 0


def test_full_mode_adds_scaled_parallel_part() -> None:
    base, experts = random_model(SMALL_SHAPES, experts=3, seed=5)
    lite = merge(base, experts, NeuroMerging(mask_rate=0.5, lambda_2=1.5))
    full = merge(base, experts, NeuroMerging(mask_rate=0.5, lambda_1=0.7, lambda_2=1.5))
    assert NeuroMerging().mode == "lite" and NeuroMerging(lambda_1=0.7).mode == "full"
    assert full.info["statistics"]["lambda_2"] == 1.5
    trimmed, _ = trimmed_task_vectors(base, experts, 0.5)
    par, _ = neuron_merge(base["lin.weight"], trimmed["lin.weight"])
    diff = full.state_dict["lin.weight"] - lite.state_dict["lin.weight"]
    assert par.abs().max() > 1e-4
    assert torch.allclose(diff, 0.7 * par, atol=1e-12)
    # psi_par is along w0 / ||w0||: each row is parallel to the base row.
    cosine = (par * base["lin.weight"]).sum(-1) / (par.norm(dim=-1) * base["lin.weight"].norm(dim=-1))
    assert torch.allclose(cosine.abs()[par.norm(dim=-1) > 0], torch.ones(1, dtype=torch.float64))
    assert torch.equal(full.state_dict["lin.bias"], lite.state_dict["lin.bias"])


def test_mask_rate_zero_keeps_everything() -> None:
    base, experts = random_model(SMALL_SHAPES, experts=2, seed=6)
    result = merge(base, experts, NeuroMerging(mask_rate=0.0))
    stats = result.info["statistics"]
    assert stats["lambda_2"] == 1.0 and stats["trim"]["thresholds"] == [None, None]
    assert stats["trim"]["sigma_per_task"] == [0.0, 0.0]
    _, psi_orth = merge_orthogonal(base["lin.weight"], torch.stack([e["lin.weight"] - base["lin.weight"] for e in experts]))
    assert torch.allclose(result.state_dict["lin.weight"] - base["lin.weight"], psi_orth, atol=1e-12)


@pytest.mark.parametrize("tasks, fan_in", [(3, 40), (6, 4), (8, 8)])
def test_gram_kernel_matches_per_neuron_svd(tasks: int, fan_in: int) -> None:
    """Including T > n and duplicated experts (rank-deficient Gram matrices)."""
    bench = load_benchmark()
    base, experts = random_model({"w": (9, fan_in), "b": (9,)}, experts=tasks, seed=tasks)
    experts[-1] = {k: v.clone() for k, v in experts[0].items()}  # a duplicate expert
    ours = merge_state_dicts(base, experts, NeuroMerging(mask_rate=0.6))
    svd = bench.per_neuron_neuromerging(base, experts, mask_rate=0.6)
    for name in ours:
        ref = svd[name] - base[name]
        assert (ours[name] - base[name] - ref).abs().max() <= 1e-9 * ref.abs().max(), name


def test_low_precision_inputs_are_computed_in_float32_and_keep_their_dtype() -> None:
    base, experts = random_model(SMALL_SHAPES, experts=3, seed=7, dtype=torch.bfloat16)
    out = merge_state_dicts(base, experts, NeuroMerging(mask_rate=0.5))
    assert {k: v.dtype for k, v in out.items()} == {k: torch.bfloat16 for k in base}
    # Same inputs upcast to float32 give the float32 computation; rounding it gives our result.
    up = merge_state_dicts(
        {k: v.float() for k, v in base.items()}, [{k: v.float() for k, v in e.items()} for e in experts], NeuroMerging(mask_rate=0.5)
    )
    for name in out:
        assert torch.equal(out[name], up[name].to(torch.bfloat16)), name


def test_bad_hyperparameters_name_the_flag() -> None:
    with pytest.raises(ValueError, match="mask_rate"):
        NeuroMerging(mask_rate=1.2)
    with pytest.raises(ValueError, match="lambda_2"):
        NeuroMerging(lambda_2="fixed")
    assert NeuroMerging().hparams() == {"mask_rate": 0.8, "lambda_1": 0.0, "lambda_2": "auto"}
