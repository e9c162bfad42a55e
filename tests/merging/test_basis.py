"""Search candidates from basis merges equal the engine's direct merges."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from neuroflow.merging.basis import BasisMerges, supports
from neuroflow.merging.search import with_params
from neuroflow.merging import DARE, TIES, NeuroMerging, TaskArithmetic, WeightAveraging, merge, routing_from_module


def small_model_and_experts(num_experts: int = 3):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(20, 8), nn.Linear(8, 6), nn.LayerNorm(6), nn.Linear(6, 4))
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    experts = [{k: v + 0.1 * torch.randn_like(v) for k, v in base.items()} for _ in range(num_experts)]
    return routing_from_module(model), base, experts


@pytest.mark.parametrize(
    "method, grid",
    [
        (NeuroMerging(), [{"lambda_1": 0.0, "lambda_2": "auto"}, {"lambda_1": 0.7, "lambda_2": 1.3},
                          {"lambda_1": 1.0, "lambda_2": "auto", "mask_rate": 0.5}, {"lambda_1": 0.2, "lambda_2": 0.0}]),
        (TIES(), [{"scaling": 0.5}, {"scaling": 1.7}, {"scaling": 1.0, "mask_rate": 0.6}]),
        (TaskArithmetic(), [{"scaling": 0.3}, {"scaling": 1.0}]),
        (DARE(drop_rate=0.5, then="ties"), [{"scaling": 0.4}, {"scaling": 2.0, "drop_rate": 0.3}]),
    ],
)
def test_basis_candidates_equal_direct_merges(method, grid):
    routing, base, experts = small_model_and_experts()
    calls = []

    def merge_fn(m):
        calls.append(m)
        result = merge(base, experts, m, routing=routing)
        return result.state_dict, result.info

    basis = BasisMerges(merge_fn, base)
    for params in grid:
        candidate = with_params(method, params)
        expected = merge(base, experts, candidate, routing=routing).state_dict
        got = basis.weights(candidate)
        for name in base:
            torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)
    groups = len({BasisMerges.group_key(with_params(method, p)) for p in grid})
    per_group = 2 if isinstance(method, NeuroMerging) else 1
    assert len(calls) <= groups * per_group + per_group  # one basis per group (+ a revisited group)


def test_supports_only_linear_coefficients():
    assert supports(NeuroMerging(), {"lambda_1": [0, 1]})
    assert supports(TIES(), {"scaling": [1], "mask_rate": [0.8]})
    assert not supports(TIES(), {"mask_rate": [0.7, 0.8]})
    assert not supports(WeightAveraging(), {})
