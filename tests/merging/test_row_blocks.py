"""Large tensors merged a row block at a time give exactly the whole-tensor merge."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import neuroflow.merging.task_vectors as task_vectors_module
from neuroflow.merging import DARE, TIES, NeuroMerging, TaskArithmetic, merge_state_dicts
from neuroflow.merging.engine import merge_stream
from neuroflow.merging.sources import SafetensorsExperts, SafetensorsFile
from neuroflow.merging.steps import TieFallback, ties_merge

WHOLE = 1 << 40


def _model(seed: int, scale: float = 0.0, base: dict | None = None) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = {"embed.weight": (37, 12), "proj.weight": (9, 12), "norm.weight": (12,), "conv": (10, 3, 4)}
    if base is None:
        return {k: torch.randn(s, generator=g).to(torch.bfloat16) for k, s in shapes.items()}
    return {k: (v.float() + scale * torch.randn(v.shape, generator=g)).to(v.dtype) for k, v in base.items()}


@pytest.fixture()
def inputs():
    base = _model(0)
    return base, [_model(i + 1, 0.05, base) for i in range(3)]


def _merge(monkeypatch, block_bytes: int, base, experts, method):
    monkeypatch.setattr(task_vectors_module, "ROW_BLOCK_BYTES", block_bytes)
    return merge_state_dicts(base, experts, method)


METHODS = [
    TaskArithmetic(0.4),
    TIES(mask_rate=0.7),
    NeuroMerging(mask_rate=0.7),
    NeuroMerging(mask_rate=0.5, lambda_1=0.6, lambda_2=1.3),
    DARE(drop_rate=0.5, seed=3, then="ties"),
]


@pytest.mark.parametrize("method", METHODS, ids=lambda m: repr(m))
def test_row_blocks_equal_the_whole_tensor_merge(monkeypatch, inputs, method) -> None:
    base, experts = inputs
    whole = _merge(monkeypatch, WHOLE, base, experts, method)
    blocked = _merge(monkeypatch, 100, base, experts, method)  # 100 bytes: 2-row blocks of the embedding
    for name in base:
        assert torch.equal(whole[name], blocked[name]), name


def test_blocks_are_used_where_the_method_allows(monkeypatch, inputs) -> None:
    base, experts = inputs
    monkeypatch.setattr(task_vectors_module, "ROW_BLOCK_BYTES", 100)
    units = lambda method: {n: len(merge_stream(base, experts, method)._units(n)) for n in base}  # noqa: E731
    assert units(TaskArithmetic())["embed.weight"] == 19  # 37 rows, 2 per block
    assert units(TIES(mask_rate=0.7))["conv"] == 5  # 48 bytes a row: 2 rows (96 bytes) a block
    assert units(TIES(mask_rate=0.7, scope="tensor"))["embed.weight"] == 1  # per-tensor threshold
    assert units(NeuroMerging(lambda_1=0.5, lambda_2=1.0))["embed.weight"] == 1  # parallel part spans the tensor
    assert units(DARE(drop_rate=0.5))["embed.weight"] == 1  # one random stream per tensor
    assert units(TaskArithmetic())["norm.weight"] == 1  # 48 bytes: one block


def test_tie_fallback_decided_by_the_whole_tensor(monkeypatch) -> None:
    # Column 0 of row 0 cancels exactly (+1, -1): its merged value depends on the tensor-wide
    # fallback, which the other rows (all negative) make -1. A block-local fallback would be +1.
    base = {"w": torch.zeros(8, 4)}
    a = -torch.ones(8, 4)
    b = -torch.ones(8, 4)
    a[0, 0], b[0, 0] = 1.0, -1.0
    experts = [{"w": a}, {"w": b}]
    whole = _merge(monkeypatch, WHOLE, base, experts, TIES(mask_rate=0.0))
    blocked = _merge(monkeypatch, 16, base, experts, TIES(mask_rate=0.0))  # one row per block
    assert whole["w"][0, 0].item() == -1.0  # the mean of the negative entry only
    assert torch.equal(whole["w"], blocked["w"])
    # And with a positive majority the assumed +1 stands (no second pass needed).
    experts = [{"w": -a}, {"w": -b}]
    experts[0]["w"][0, 0], experts[1]["w"][0, 0] = 1.0, -1.0
    assert _merge(monkeypatch, 16, base, experts, TIES(mask_rate=0.0))["w"][0, 0].item() == 1.0


def test_tie_tracker_flags_only_ambiguous_blocks() -> None:
    tie = TieFallback()
    x = torch.tensor([[[1.0, 0.0], [2.0, 0.0]], [[-1.0, 0.0], [1.0, 0.0]]])  # column (0, 0) cancels; (., 1) all zero
    ties_merge(x.clone(), tie=tie)
    assert tie.assumed and tie.sign_sum == 1
    ties_merge(torch.tensor([[[0.0, 3.0]], [[0.0, 1.0]]]), tie=tie)
    assert not tie.assumed and tie.sign_sum == 2 and tie.fallback == 1.0


def test_lazy_files_read_only_their_rows(tmp_path, monkeypatch, inputs) -> None:
    base, experts = inputs
    save_file(base, tmp_path / "base.safetensors")
    for i, e in enumerate(experts):
        save_file(e, tmp_path / f"e{i}.safetensors")
    lazy_base = SafetensorsFile(tmp_path / "base.safetensors")
    assert torch.equal(lazy_base.read_rows("embed.weight", 3, 7), base["embed.weight"][3:7])
    source = SafetensorsExperts([tmp_path / f"e{i}.safetensors" for i in range(3)])
    method = NeuroMerging(mask_rate=0.7)
    whole = _merge(monkeypatch, WHOLE, base, experts, method)
    blocked = _merge(monkeypatch, 100, lazy_base, source, method)
    for name in base:
        assert torch.equal(whole[name], blocked[name]), name
