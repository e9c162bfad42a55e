"""Routing from modules (by layer type) and from bare state dicts; overrides and exclusions."""

from __future__ import annotations

import torch
from torch import nn

from neuroflow.merging import (
    NEURON_COLUMNS,
    NEURON_ROWS,
    POINT,
    SKIP,
    NeuroMerging,
    Route,
    TaskArithmetic,
    merge,
    merge_state_dicts,
    routing_from_module,
    routing_from_state_dict,
)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from transformers.pytorch_utils import Conv1D

        self.emb = nn.Embedding(10, 4)
        self.lin = nn.Linear(4, 3)
        self.conv = nn.Conv2d(2, 5, kernel_size=3)
        self.deconv = nn.ConvTranspose2d(5, 2, kernel_size=2)
        self.gpt2 = Conv1D(6, 4)  # x @ W with W of shape (4, 6): neurons are columns
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 2)
        self.scale = nn.Parameter(torch.ones(3, 7))  # unknown 2-D parameter: shape rule
        self.register_buffer("position_ids", torch.arange(8))
        self.register_buffer("running", torch.zeros(4))


def test_routing_from_module_by_layer_type() -> None:
    routes = routing_from_module(Tiny())
    assert routes["emb.weight"] == NEURON_ROWS
    assert routes["lin.weight"] == NEURON_ROWS and routes["lin.bias"] == POINT
    assert routes["conv.weight"] == NEURON_ROWS and routes["conv.bias"] == POINT
    assert routes["deconv.weight"] == NEURON_COLUMNS
    assert routes["gpt2.weight"] == NEURON_COLUMNS and routes["gpt2.bias"] == POINT
    assert routes["norm.weight"] == POINT and routes["norm.bias"] == POINT
    assert routes["scale"] == NEURON_ROWS
    assert routes["position_ids"] == SKIP and routes["running"] == SKIP


def test_tied_weights_are_routed_under_every_name() -> None:
    model = nn.Sequential(nn.Embedding(6, 3), nn.Linear(3, 6, bias=False))
    model[1].weight = model[0].weight
    routes = routing_from_module(model)
    assert routes["0.weight"] == NEURON_ROWS and routes["1.weight"] == NEURON_ROWS


def test_overrides_by_name_and_glob() -> None:
    routes = routing_from_module(Tiny(), overrides={"scale": "neuron_columns", "head.*": "skip"})
    assert routes["scale"] == NEURON_COLUMNS
    assert routes["head.weight"] == SKIP and routes["head.bias"] == SKIP
    sd_routes = routing_from_state_dict(
        {"a.weight": torch.zeros(3, 3), "a.bias": torch.zeros(3), "ids": torch.zeros(3, dtype=torch.long), "c": torch.zeros(2, 2, 2)},
        overrides={"a.*": "point"},
    )
    assert sd_routes == {"a.weight": POINT, "a.bias": POINT, "ids": SKIP, "c": POINT}


def test_state_dict_rule() -> None:
    sd = {"w": torch.zeros(3, 4), "b": torch.zeros(3), "k": torch.zeros(2, 3, 3, 3), "i": torch.zeros(4, dtype=torch.int64)}
    assert routing_from_state_dict(sd) == {"w": NEURON_ROWS, "b": POINT, "k": POINT, "i": SKIP}


def test_transposed_routing_merges_columns_like_the_untransposed_layer() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 4, generator=g, dtype=torch.float64)
    experts = [w + 0.1 * torch.randn(6, 4, generator=g, dtype=torch.float64) for _ in range(3)]
    method = NeuroMerging(mask_rate=0.5)
    rows = merge_state_dicts({"w": w}, [{"w": e} for e in experts], method)["w"]
    columns = merge_state_dicts({"w": w.T.contiguous()}, [{"w": e.T.contiguous()} for e in experts], method, routing={"w": NEURON_COLUMNS})["w"]
    assert torch.allclose(columns, rows.T, atol=1e-12)


def test_convolution_neurons_are_output_channels() -> None:
    g = torch.Generator().manual_seed(1)
    w = torch.randn(5, 2, 3, 3, generator=g, dtype=torch.float64)
    experts = [w + 0.1 * torch.randn(w.shape, generator=g, dtype=torch.float64) for _ in range(3)]
    method = NeuroMerging(mask_rate=0.5)
    conv = merge_state_dicts({"w": w}, [{"w": e} for e in experts], method, routing={"w": "neuron"})["w"]
    flat = merge_state_dicts({"w": w.reshape(5, -1)}, [{"w": e.reshape(5, -1)} for e in experts], method)["w"]
    assert torch.allclose(conv, flat.reshape(w.shape), atol=1e-12)
    # Each output channel's update is orthogonal to its pre-trained filter.
    delta = (conv - w).reshape(5, -1)
    assert ((delta * w.reshape(5, -1)).sum(-1)).abs().max() < 1e-12


def test_route_roundtrip_for_columns() -> None:
    x = torch.arange(24.0).reshape(2, 3, 4)
    route = Route("neuron", axis=1)
    rows = route.to_neurons(x)
    assert rows.shape == (3, 8)
    assert torch.equal(route.from_neurons(rows, x.shape), x)


def test_exclusion_and_non_float_tensors_are_copied_from_base() -> None:
    model = Tiny()
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    experts = [{k: (v + 1 if v.is_floating_point() else v + 5) for k, v in base.items()} for _ in range(2)]
    result = merge(base, experts, TaskArithmetic(scaling=1.0), routing=routing_from_module(model), exclude=["head.*"])
    out = result.state_dict
    assert torch.equal(out["head.weight"], base["head.weight"]) and out["head.weight"] is not base["head.weight"]
    assert torch.equal(out["position_ids"], base["position_ids"])  # buffer: skipped
    assert torch.equal(out["running"], base["running"])
    assert torch.allclose(out["lin.weight"], base["lin.weight"] + 2)
    assert result.info["routing"]["skip"] == 4
