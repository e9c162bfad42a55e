"""TSV-M: hand-computed whitening cases, a literal reference implementation, routes and edge cases."""

from __future__ import annotations

import math

import pytest
import torch
from jsonargparse import ArgumentParser

from neuroflow.merging import MergeMethod, TSVMerge, merge, merge_state_dicts
from neuroflow.merging.tsv import polar_factor, tsv_merge_matrix, tsv_rank

D = torch.float64


def reference_tsv(taus: list[torch.Tensor], alpha: float = 1.0) -> torch.Tensor:
    """TSV-M as the paper writes it: truncate, concatenate, whiten by SVD, reassemble."""
    k = int(min(taus[0].shape) * (1 / len(taus)))
    us, ss, vs = [], [], []
    for tau in taus:
        u, s, vh = torch.linalg.svd(tau.double(), full_matrices=False)
        us.append(u[:, :k])
        ss.append(s[:k])
        vs.append(vh[:k].T)
    pu, _, qu = torch.linalg.svd(torch.cat(us, dim=1), full_matrices=False)
    pv, _, qv = torch.linalg.svd(torch.cat(vs, dim=1), full_matrices=False)
    return alpha * (pu @ qu) @ torch.diag(torch.cat(ss)) @ (pv @ qv).T


def two_layer_case() -> tuple[dict, list[dict], dict]:
    """Two tasks, two matrices and a bias, with the merged update known in closed form."""
    a, b, phi = 2.0, 0.5, 0.3
    c, s = math.cos(phi), math.sin(phi)
    u1, u2 = torch.tensor([c, s], dtype=D), torch.tensor([s, c], dtype=D)
    e1, e2 = torch.eye(2, dtype=D)
    # Layer 1: the tasks' output directions overlap (cos angle = sin 2 phi); [u1 u2] is symmetric
    # positive definite, so its polar factor is the identity and whitening maps u1 -> e1, u2 -> e2.
    l1 = (a * torch.outer(u1, e1), b * torch.outer(u2, e2))
    # Layer 2 (3 x 2): orthonormal directions, nothing to whiten: TSV-M is the plain sum.
    f1 = torch.tensor([1.0, 2.0, 2.0], dtype=D) / 3
    f2 = torch.tensor([2.0, 1.0, -2.0], dtype=D) / 3
    g1 = torch.tensor([0.6, 0.8], dtype=D)
    g2 = torch.tensor([-0.8, 0.6], dtype=D)
    l2 = (3.0 * torch.outer(f1, g1), 1.5 * torch.outer(f2, g2))
    bias = (torch.tensor([1.0, -2.0], dtype=D), torch.tensor([3.0, 0.0], dtype=D))
    base = {"l1.weight": torch.ones(2, 2, dtype=D), "l2.weight": torch.full((3, 2), -1.0, dtype=D), "l1.bias": torch.zeros(2, dtype=D)}
    experts = [
        {"l1.weight": base["l1.weight"] + l1[t], "l2.weight": base["l2.weight"] + l2[t], "l1.bias": base["l1.bias"] + bias[t]}
        for t in range(2)
    ]
    delta = {
        "l1.weight": torch.diag(torch.tensor([a, b], dtype=D)),
        "l2.weight": l2[0] + l2[1],
        "l1.bias": torch.tensor([2.0, -1.0], dtype=D),  # the mean: points are averaged
    }
    return base, experts, delta


def test_two_layer_closed_form_end_to_end() -> None:
    base, experts, delta = two_layer_case()
    for alpha in (1.0, 0.4):
        out = merge_state_dicts(base, experts, TSVMerge(alpha=alpha))
        for name in base:
            assert torch.allclose(out[name], base[name] + alpha * delta[name], atol=1e-12), name


def test_generic_matrices_match_the_literal_reference() -> None:
    g = torch.Generator().manual_seed(0)
    for shape, tasks in (((7, 5), 2), ((4, 9), 3), ((6, 6), 4)):
        taus = [torch.randn(shape, generator=g, dtype=D) for _ in range(tasks)]
        expected = reference_tsv(taus)
        k = tsv_rank(min(shape), tasks)
        assert torch.allclose(tsv_merge_matrix(torch.stack(taus), k), expected, atol=1e-12)
        base = {"w": torch.randn(shape, generator=g, dtype=D)}
        out = merge_state_dicts(base, [{"w": base["w"] + t} for t in taus], TSVMerge(alpha=0.7))
        assert torch.allclose(out["w"], base["w"] + 0.7 * expected, atol=1e-12)


def test_float32_is_computed_in_float64() -> None:
    g = torch.Generator().manual_seed(1)
    base = {"w": torch.randn(8, 6, generator=g)}
    experts = [{"w": base["w"] + 0.1 * torch.randn(8, 6, generator=g)} for _ in range(3)]
    out = merge_state_dicts(base, experts, TSVMerge())
    taus = [e["w"].double() - base["w"].double() for e in experts]
    assert out["w"].dtype == torch.float32
    assert torch.allclose(out["w"].double(), base["w"].double() + reference_tsv(taus), atol=1e-6)


def test_conv1d_columns_route_is_the_transposed_rows_merge() -> None:
    g = torch.Generator().manual_seed(2)
    w = torch.randn(5, 3, generator=g, dtype=D)
    taus = [torch.randn(5, 3, generator=g, dtype=D) for _ in range(2)]
    rows = merge_state_dicts({"w": w}, [{"w": w + t} for t in taus], TSVMerge())["w"]
    cols = merge_state_dicts({"w": w.T}, [{"w": (w + t).T} for t in taus], TSVMerge(), routing={"w": "neuron_columns"})["w"]
    assert torch.allclose(cols, rows.T, atol=1e-12)


def test_zero_task_adds_no_arbitrary_directions() -> None:
    # A zero task matrix has an arbitrary singular basis; it must not rotate the other task's.
    g = torch.Generator().manual_seed(3)
    tau = torch.randn(4, 4, generator=g, dtype=D)
    u, s, vh = torch.linalg.svd(tau)
    top2 = u[:, :2] @ torch.diag(s[:2]) @ vh[:2]
    merged = tsv_merge_matrix(torch.stack([tau, torch.zeros_like(tau)]), k=2)
    assert torch.allclose(merged, top2, atol=1e-12)
    assert torch.equal(tsv_merge_matrix(torch.zeros(2, 3, 3, dtype=D), k=1), torch.zeros(3, 3, dtype=D))


def test_duplicated_tasks_are_merged_deterministically() -> None:
    # [U U] is rank-deficient: the polar factor over its numerical rank gives the task itself back.
    tau = torch.tensor([[3.0, 0.0], [0.0, 1.0], [0.0, 0.0]], dtype=D)
    merged = tsv_merge_matrix(torch.stack([tau, tau]), k=1)
    assert torch.allclose(merged, torch.outer(torch.tensor([1.0, 0, 0], dtype=D), torch.tensor([3.0, 0], dtype=D)), atol=1e-12)
    x = torch.tensor([[1.0, 1.0], [0.0, 0.0]], dtype=D)
    assert torch.allclose(polar_factor(x), x / math.sqrt(2), atol=1e-15)


def test_rank_per_task() -> None:
    assert tsv_rank(384, 8) == 48 and tsv_rank(384, 3) == 128 and tsv_rank(5, 2) == 2
    assert tsv_rank(2, 4) == 1  # fewer singular values than tasks: one each, not none
    assert tsv_rank(10, 2, fraction=0.3) == 3 and tsv_rank(10, 2, fraction=1.0) == 10


def test_alpha_is_the_linear_coefficient() -> None:
    method = TSVMerge(alpha=0.3)
    assert method.linear_hparams == ("alpha",)
    basis = method.basis()
    assert [b.hparams() for b in basis] == [{"fraction": None, "alpha": 1.0}]
    assert method.coefficients([{}]) == [0.3]
    base, experts, _ = two_layer_case()
    unit = merge_state_dicts(base, experts, basis[0])
    scaled = merge_state_dicts(base, experts, method)
    for name in base:
        assert torch.allclose(scaled[name] - base[name], 0.3 * (unit[name] - base[name]), atol=1e-12)


def test_config_info_and_bad_fraction() -> None:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(MergeMethod, "method")
    method = parser.instantiate(parser.parse_args(["--method", '{"class_path": "TSVMerge", "init_args": {"fraction": 0.25}}'])).method
    assert isinstance(method, TSVMerge) and method.fraction == 0.25 and not method.uses_data
    base, experts, _ = two_layer_case()
    info = merge(base, experts, TSVMerge()).info
    assert info["method"] == "tsv_m" and info["hparams"] == {"fraction": None, "alpha": 1.0}
    for bad in (0.0, 1.5, -0.1, float("nan"), "0.5", True):
        with pytest.raises(ValueError, match="TSVMerge: fraction must be"):
            TSVMerge(fraction=bad)
    for bad in (float("inf"), "1", None):
        with pytest.raises(ValueError, match="TSVMerge: alpha must be a finite number"):
            TSVMerge(alpha=bad)


def test_empty_tensors_merge_to_empty() -> None:
    base = {"a": torch.empty(0, 4), "b": torch.empty(4, 0), "c": torch.empty(3, 0, 2), "w": torch.ones(3, 2)}
    experts = [{k: v + t for k, v in base.items()} for t in (1.0, 2.0)]
    routing = {"b": "neuron_columns"}
    out = merge_state_dicts(base, experts, TSVMerge(), routing=routing)
    assert all(out[k].shape == base[k].shape for k in base)
    assert torch.isfinite(out["w"]).all()
