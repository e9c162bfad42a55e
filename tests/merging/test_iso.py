"""Iso-C and Iso-CTS: hand-computed spectra, flatness, literal reference implementations, routes."""

from __future__ import annotations

import math

import pytest
import torch

from neuroflow.merging import IsoC, IsoCTS, merge, merge_state_dicts
from neuroflow.merging.iso import iso_c, iso_cts, iso_cts_split

D = torch.float64


def reference_iso_c(taus: list[torch.Tensor], alpha: float = 1.0) -> torch.Tensor:
    u, s, vh = torch.linalg.svd(sum(t.double() for t in taus), full_matrices=False)
    return alpha * s.mean() * u @ vh


def reference_iso_cts(taus: list[torch.Tensor], fraction: float, alpha: float = 1.0) -> torch.Tensor:
    """Iso-CTS as the paper describes it, with the authors' split of the rank."""
    m = sum(t.double() for t in taus)
    rank, tasks = min(m.shape), len(taus)
    per_task = min(rank // tasks, round((rank - int(rank * fraction)) / tasks))
    common = rank - tasks * per_task
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    us, ss, vs = [u[:, :common]], [s[:common]], [vh[:common].T]
    for tau in taus:
        resid = tau.double() - u[:, :common] @ u[:, :common].T @ tau.double()
        ut, st, vht = torch.linalg.svd(resid, full_matrices=False)
        us.append(ut[:, :per_task])
        ss.append(st[:per_task])
        vs.append(vht[:per_task].T)
    pu, _, qu = torch.linalg.svd(torch.cat(us, 1), full_matrices=False)
    pv, _, qv = torch.linalg.svd(torch.cat(vs, 1), full_matrices=False)
    return alpha * torch.cat(ss).mean() * (pu @ qu) @ (pv @ qv).T


def two_layer_case() -> tuple[dict, list[dict], dict]:
    """Two tasks, two matrices and a bias, Iso-C known in closed form."""
    a, b, phi = 2.0, 0.5, 0.3
    c, s = math.cos(phi), math.sin(phi)
    # Layer 1 (3 x 2): orthogonal rank-1 tasks; M = a f1 g1^T + b f2 g2^T has singular values
    # (a, b), so Iso-C is (a + b) / 2 (f1 g1^T + f2 g2^T).
    f1, f2 = torch.tensor([1.0, 2.0, 2.0], dtype=D) / 3, torch.tensor([2.0, 1.0, -2.0], dtype=D) / 3
    g1, g2 = torch.tensor([0.6, 0.8], dtype=D), torch.tensor([-0.8, 0.6], dtype=D)
    l1 = (a * torch.outer(f1, g1), b * torch.outer(f2, g2))
    # Layer 2 (2 x 2): equal magnitudes, overlapping output directions u1 = (c, s), u2 = (s, c):
    # M = a [[c, s], [s, c]] is symmetric positive definite with eigenvalues a (c +- s), so
    # U V^T = I and mean(S) = a c.
    u1, u2 = torch.tensor([c, s], dtype=D), torch.tensor([s, c], dtype=D)
    e1, e2 = torch.eye(2, dtype=D)
    l2 = (a * torch.outer(u1, e1), a * torch.outer(u2, e2))
    bias = (torch.tensor([1.0, -2.0], dtype=D), torch.tensor([3.0, 0.0], dtype=D))
    base = {"l1.weight": torch.ones(3, 2, dtype=D), "l2.weight": torch.eye(2, dtype=D), "l2.bias": torch.ones(2, dtype=D)}
    experts = [
        {"l1.weight": base["l1.weight"] + l1[t], "l2.weight": base["l2.weight"] + l2[t], "l2.bias": base["l2.bias"] + bias[t]}
        for t in range(2)
    ]
    delta = {
        "l1.weight": (a + b) / 2 * (torch.outer(f1, g1) + torch.outer(f2, g2)),
        "l2.weight": a * c * torch.eye(2, dtype=D),
        "l2.bias": torch.tensor([2.0, -1.0], dtype=D),
    }
    return base, experts, delta


def test_iso_c_two_layer_closed_form_end_to_end() -> None:
    base, experts, delta = two_layer_case()
    for alpha in (1.0, 1.5):
        out = merge_state_dicts(base, experts, IsoC(alpha=alpha))
        for name in base:
            assert torch.allclose(out[name], base[name] + alpha * delta[name], atol=1e-12), name


def test_iso_c_spectrum_is_flat_and_keeps_the_nuclear_norm() -> None:
    g = torch.Generator().manual_seed(0)
    taus = [torch.randn(9, 6, generator=g, dtype=D) for _ in range(3)]
    merged = iso_c(torch.stack(taus).sum(0), alpha=1.0)
    s = torch.linalg.svdvals(merged)
    s_sum = torch.linalg.svdvals(torch.stack(taus).sum(0))
    assert torch.allclose(s, torch.full_like(s, s_sum.mean().item()), atol=1e-12)
    assert torch.allclose(s.sum(), s_sum.sum(), atol=1e-12)
    assert torch.allclose(merged, reference_iso_c(taus), atol=1e-12)


def test_iso_c_float32_matches_the_reference() -> None:
    g = torch.Generator().manual_seed(1)
    base = {"w": torch.randn(6, 8, generator=g)}
    experts = [{"w": base["w"] + 0.1 * torch.randn(6, 8, generator=g)} for _ in range(4)]
    out = merge_state_dicts(base, experts, IsoC(alpha=0.8))
    taus = [e["w"].double() - base["w"].double() for e in experts]
    assert out["w"].dtype == torch.float32
    assert torch.allclose(out["w"].double(), base["w"].double() + reference_iso_c(taus, 0.8), atol=1e-6)


def test_iso_c_rank_deficient_sum_has_no_arbitrary_directions() -> None:
    # M = diag(6, 1.2, 0): the third singular pair is arbitrary (any sign); only the two real
    # directions share the isotropic value mean(6, 1.2) = 3.6.
    m = torch.diag(torch.tensor([6.0, 1.2, 0.0], dtype=D))
    assert torch.allclose(iso_c(m), torch.diag(torch.tensor([3.6, 3.6, 0.0], dtype=D)), atol=1e-12)
    assert torch.equal(iso_c(torch.zeros(3, 2, dtype=D)), torch.zeros(3, 2, dtype=D))


def test_iso_cts_hand_computed() -> None:
    # rank 3, T = 2, fraction 0.5: 1 common direction (e1 of M = diag(6, 1.2, 0)) and 1 per task:
    # task 1's residual diag(0, 1, 0.5) gives (e2, 1, e2); task 2's diag(0, 0.2, -0.5) gives
    # (e3, 0.5, -e3). The bases are orthonormal already, the isotropic value is (6 + 1 + 0.5) / 3.
    taus = torch.stack([torch.diag(torch.tensor([3.0, 1.0, 0.5], dtype=D)), torch.diag(torch.tensor([3.0, 0.2, -0.5], dtype=D))])
    assert iso_cts_split(3, 2, 0.5) == (1, 1)
    expected = 2.5 * torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=D))
    assert torch.allclose(iso_cts(taus, 0.5), expected, atol=1e-12)
    base = {"w": torch.ones(3, 3, dtype=D), "b": torch.zeros(3, dtype=D)}
    experts = [{"w": base["w"] + taus[t], "b": torch.full((3,), float(t))} for t in range(2)]
    experts = [{k: v.to(D) for k, v in e.items()} for e in experts]
    out = merge_state_dicts(base, experts, IsoCTS(common_space_fraction=0.5, alpha=2.0))
    assert torch.allclose(out["w"], base["w"] + 2.0 * expected, atol=1e-12)
    assert torch.allclose(out["b"], torch.full((3,), 1.0, dtype=D))  # 2.0 * mean(0, 1)


def test_iso_cts_generic_matches_the_literal_reference() -> None:
    g = torch.Generator().manual_seed(2)
    for shape, tasks, fraction in (((10, 8), 2, 0.5), ((7, 12), 3, 0.8), ((16, 16), 4, 0.25)):
        taus = [torch.randn(shape, generator=g, dtype=D) for _ in range(tasks)]
        expected = reference_iso_cts(taus, fraction, alpha=1.3)
        assert torch.allclose(iso_cts(torch.stack(taus), fraction, alpha=1.3), expected, atol=1e-10)
        base = {"w": torch.randn(shape, generator=g, dtype=D)}
        out = merge_state_dicts(base, [{"w": base["w"] + t} for t in taus], IsoCTS(fraction, alpha=1.3))
        assert torch.allclose(out["w"], base["w"] + expected, atol=1e-10)
        # the flattened spectrum covers the whole rank
        s = torch.linalg.svdvals(out["w"] - base["w"])
        assert torch.allclose(s, s.mean().expand_as(s), atol=1e-10)


def test_iso_cts_without_task_share_is_iso_c() -> None:
    g = torch.Generator().manual_seed(3)
    taus = torch.randn(3, 6, 5, generator=g, dtype=D)
    assert iso_cts_split(5, 3, 0.8) == (5, 0)
    assert torch.allclose(iso_cts(taus, 0.8), iso_c(taus.sum(0)), atol=1e-12)
    assert torch.allclose(iso_cts(taus, 1.0), iso_c(taus.sum(0)), atol=1e-12)


def test_split_follows_the_authors_rounding() -> None:
    assert iso_cts_split(768, 8, 0.8) == (616, 19)
    assert iso_cts_split(384, 4, 0.8) == (384 - 4 * 19, 19)
    assert iso_cts_split(3, 2, 0.0) == (1, 1)  # capped: round(1.5) = 2 would overfill the rank


def test_iso_cts_projects_the_output_side_for_conv1d() -> None:
    # Iso-CTS is not transpose-symmetric; a Conv1D weight (stored in x out) routed by columns
    # must give the transpose of the nn.Linear-layout merge.
    g = torch.Generator().manual_seed(4)
    w = torch.randn(6, 4, generator=g, dtype=D)
    taus = [torch.randn(6, 4, generator=g, dtype=D) for _ in range(2)]
    rows = merge_state_dicts({"w": w}, [{"w": w + t} for t in taus], IsoCTS(0.5))["w"]
    cols = merge_state_dicts({"w": w.T}, [{"w": (w + t).T} for t in taus], IsoCTS(0.5), routing={"w": "neuron_columns"})["w"]
    assert torch.allclose(cols, rows.T, atol=1e-12)
    transposed = merge_state_dicts({"w": w.T}, [{"w": (w + t).T} for t in taus], IsoCTS(0.5))["w"]
    assert not torch.allclose(transposed, rows.T, atol=1e-6)


def test_alpha_is_linear_and_info() -> None:
    base, experts, _ = two_layer_case()
    for method in (IsoC(alpha=0.6), IsoCTS(common_space_fraction=0.5, alpha=0.6)):
        (unit,) = method.basis()
        assert method.coefficients([{}]) == [0.6] and unit.alpha == 1.0
        one = merge_state_dicts(base, experts, unit)
        scaled = merge_state_dicts(base, experts, method)
        for name in base:
            assert torch.allclose(scaled[name] - base[name], 0.6 * (one[name] - base[name]), atol=1e-12)
    info = merge(base, experts, IsoCTS()).info
    assert info["method"] == "iso_cts" and info["hparams"] == {"common_space_fraction": 0.8, "alpha": 1.0}
    for bad in (1.2, -0.1, float("nan"), True, "0.8"):
        with pytest.raises(ValueError, match="IsoCTS: common_space_fraction must be"):
            IsoCTS(common_space_fraction=bad)
    for cls in (IsoC, IsoCTS):
        with pytest.raises(ValueError, match=f"{cls.__name__}: alpha must be a finite number"):
            cls(alpha=float("nan"))


@pytest.mark.parametrize("method", [IsoC(), IsoCTS(), IsoCTS(common_space_fraction=0.0)], ids=repr)
def test_empty_tensors_merge_to_empty(method) -> None:
    base = {"a": torch.empty(0, 4), "b": torch.empty(4, 0), "c": torch.empty(3, 0, 2), "w": torch.ones(3, 2)}
    experts = [{k: v + t for k, v in base.items()} for t in (1.0, 2.0)]
    out = merge_state_dicts(base, experts, method, routing={"b": "neuron_columns"})
    assert all(out[k].shape == base[k].shape for k in base)
    assert torch.isfinite(out["w"]).all()
