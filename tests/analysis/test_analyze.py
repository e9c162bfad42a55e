"""The streamed analysis pass on hand-built state dicts with known answers."""

import math

import pytest
import torch
from safetensors.torch import save_file

from neuroflow.analysis import analyze_task_vectors
from neuroflow.merging import MergeInputError, SafetensorsExperts, TaskVectors
from neuroflow.merging.engine import resolve_routing
from neuroflow.merging.sources import DictExperts


def _base() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "embeddings.weight": torch.randn(6, 4, generator=g),
        "layers.0.linear.weight": torch.randn(5, 4, generator=g),
        "layers.0.linear.bias": torch.randn(5, generator=g),
        "layers.1.linear.weight": torch.randn(3, 5, generator=g),
        "position_ids": torch.arange(6),
    }


def _orthogonal_to_rows(w0: torch.Tensor, seed: int) -> torch.Tensor:
    raw = torch.randn(w0.shape, generator=torch.Generator().manual_seed(seed))
    return raw - ((raw * w0).sum(-1, keepdim=True) / (w0 * w0).sum(-1, keepdim=True)) * w0


def _experts(base: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """`par` scales every neuron (parallel updates), `orth` turns them (orthogonal updates) and
    pushes the layer-0 bias against `par`."""
    par, orth = dict(base), dict(base)
    for name in ("embeddings.weight", "layers.0.linear.weight", "layers.1.linear.weight"):
        w0 = base[name]
        par[name] = w0 + torch.linspace(0.1, 0.5, w0.shape[0])[:, None] * w0
        orth[name] = w0 + _orthogonal_to_rows(w0, seed=len(name))
    par["layers.0.linear.bias"] = base["layers.0.linear.bias"] + 1.0
    orth["layers.0.linear.bias"] = base["layers.0.linear.bias"] - 2.0
    return [par, orth]


def test_parallel_and_orthogonal_experts_per_layer():
    base = _base()
    analysis = analyze_task_vectors(base, _experts(base), tasks=["par", "orth"], mask_rate=0.0)
    assert [e["layer"] for e in analysis["layers"]] == ["embeddings", "layers.0", "layers.1"]
    for entry in analysis["layers"]:
        assert entry["parallel_fraction"]["par"] == pytest.approx(1.0, abs=1e-6)
        assert entry["parallel_fraction"]["orth"] == pytest.approx(0.0, abs=1e-6)
    layer0 = analysis["layers"][1]
    assert (layer0["tensors"], layer0["neuron_tensors"], layer0["numel"]) == (2, 1, 25)
    # The integer buffer is not merged, hence not analysed.
    assert [t["name"] for t in analysis["tensors"]] == [n for n in base if n != "position_ids"]
    # The bias has opposite signs: 5 conflicting entries of layer 0's 25 overlapping ones at least.
    assert layer0["counts"]["conflicts"] >= 5 and layer0["conflict_rate"] >= 5 / 25
    assert analysis["tensors"][2]["conflict_rate"] == 1.0
    assert analysis["model"]["density"] == {"par": 1.0, "orth": 1.0}


def test_whole_model_cosine_is_the_gram_over_all_tensors():
    base = _base()
    experts = _experts(base)
    analysis = analyze_task_vectors(base, experts, tasks=["par", "orth"], mask_rate=0.0)
    names = [n for n in base if n != "position_ids"]
    a = torch.cat([(experts[0][n] - base[n]).reshape(-1) for n in names]).double()
    b = torch.cat([(experts[1][n] - base[n]).reshape(-1) for n in names]).double()
    expected = float(a @ b / (a.norm() * b.norm()))
    assert analysis["model"]["cosine"][0][1] == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert analysis["model"]["norm"]["par"] == pytest.approx(float(a.norm()), rel=1e-5)
    # Per layer, parallel and orthogonal rows have cosine 0 on the neuron weights.
    assert analysis["layers"][0]["cosine"][0][1] == pytest.approx(0.0, abs=1e-6)


def test_trim_is_the_merge_threshold_over_the_whole_model():
    base = _base()
    experts = _experts(base)
    mask_rate = 0.6
    analysis = analyze_task_vectors(base, experts, tasks=["par", "orth"], mask_rate=mask_rate)
    routes = resolve_routing(base)
    expected = TaskVectors(base, DictExperts(experts), routes).trim_statistics(mask_rate).summary()
    assert analysis["trim"] == expected
    # Kept entries = those at or above the global k-th magnitude (an independent oracle).
    names = [n for n in base if n != "position_ids"]
    for t, task in enumerate(["par", "orth"]):
        flat = torch.cat([(experts[t][n] - base[n]).reshape(-1) for n in names]).abs()
        kth = flat.kthvalue(math.floor(flat.numel() * mask_rate)).values
        assert analysis["model"]["density"][task] == pytest.approx(float((flat >= kth).sum()) / flat.numel())


def test_identical_experts_agree_and_overlap_fully():
    base = _base()
    experts = [_experts(base)[1]] * 2
    model = analyze_task_vectors(base, experts, tasks=["a", "b"], mask_rate=0.5)["model"]
    assert model["conflict_rate"] == 0.0 and model["jaccard"][0][1] == 1.0
    assert model["cosine"][0][1] == pytest.approx(1.0) and model["election_loss"] == {"a": 0.0, "b": 0.0}
    assert model["pairwise_conflict"][0][1] == 0.0 and model["pairwise_conflict"][0][0] is None


def test_lazy_safetensors_experts_give_the_same_analysis(tmp_path):
    base = _base()
    experts = _experts(base)
    paths = []
    for i, expert in enumerate(experts):
        paths.append(tmp_path / f"e{i}.safetensors")
        save_file({k: v.contiguous() for k, v in expert.items()}, str(paths[-1]))
    lazy = analyze_task_vectors(base, SafetensorsExperts(paths), tasks=["par", "orth"], mask_rate=0.7)
    eager = analyze_task_vectors(base, experts, tasks=["par", "orth"], mask_rate=0.7)
    assert lazy == eager


def test_bad_inputs_are_refused_before_any_work():
    base = _base()
    experts = _experts(base)
    del experts[1]["layers.1.linear.weight"]
    with pytest.raises(MergeInputError, match="missing tensor 'layers.1.linear.weight'"):
        analyze_task_vectors(base, experts)
    with pytest.raises(ValueError, match="mask_rate"):
        analyze_task_vectors(base, _experts(base), mask_rate=1.0)
    with pytest.raises(ValueError, match="one distinct task name per expert"):
        analyze_task_vectors(base, _experts(base), tasks=["x", "x"])


def test_default_names_and_a_single_expert():
    base = _base()
    analysis = analyze_task_vectors(base, _experts(base)[:1])
    assert analysis["tasks"] == ["expert 0"]
    assert analysis["model"]["conflict_rate"] is None and analysis["model"]["cosine"] == [[1.0]]


def test_one_tensor_of_task_vectors_alive_at_a_time(monkeypatch):
    import weakref

    stacks: list[weakref.ref] = []
    original = TaskVectors.stack

    def tracked(self, name, base=None):
        # Every earlier stack must be gone: the pass holds one tensor's task vectors at a time.
        assert all(ref() is None for ref in stacks), f"an earlier stack is still alive when reading {name}"
        out = original(self, name, base)
        stacks.append(weakref.ref(out))
        return out

    monkeypatch.setattr(TaskVectors, "stack", tracked)
    base = _base()
    analyze_task_vectors(base, _experts(base), mask_rate=0.5)
    assert len(stacks) == 4


def test_many_tasks_keep_the_layer_table_narrow_and_the_plot_draws(tmp_path):
    from neuroflow.analysis import analysis_section, plot_analysis

    base = _base()
    experts = [{k: v + (0.1 * (i + 1) * torch.randn(v.shape, generator=torch.Generator().manual_seed(i))
                        if v.is_floating_point() else v) for k, v in base.items()} for i in range(8)]
    # Names that are equal once cut for the plot's axes.
    analysis = analyze_task_vectors(base, experts, tasks=[f"a_long_task_name_{i}" for i in range(8)])
    section = analysis_section(analysis)
    header = [line for line in section.splitlines() if line.startswith("| layer |")][0]
    assert header.count("conflict `") <= 2
    assert "**Most conflicted task:" in section and "**Update size:** `a_long_task_name_0`" in section
    plot_analysis(analysis, tmp_path / "a.png")
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
