"""Bad input is refused before any work, with a message naming the tensor and the expert."""

from __future__ import annotations

import pytest
import torch

from neuroflow.merging import MergeInputError, MergeMethod, NeuroMerging, TaskArithmetic, merge_state_dicts

from .helpers import SMALL_SHAPES, random_model


class Exploding(MergeMethod):
    """Fails if the engine ever gets to statistics or merging."""

    def prepare(self, task_vectors):
        raise AssertionError("prepare ran on bad input")

    def merge_tensor(self, name, base, task_vectors, route, stats):
        raise AssertionError("merge_tensor ran on bad input")


@pytest.fixture
def model():
    return random_model(SMALL_SHAPES, experts=3, seed=0, dtype=torch.float32)


# bfloat16 checkpoints take the compiled difference, which checks finiteness in the same pass.
@pytest.fixture(params=[torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def any_model(request):
    return random_model(SMALL_SHAPES, experts=3, seed=0, dtype=request.param)


def refused(base, experts, match: str) -> None:
    with pytest.raises(MergeInputError, match=match):
        merge_state_dicts(base, experts, Exploding())


def test_empty_expert_list(model) -> None:
    base, _ = model
    refused(base, [], "no experts given")


def test_missing_key(model) -> None:
    base, experts = model
    del experts[1]["lin.bias"]
    refused(base, experts, r"expert 1 is missing tensor 'lin.bias'")


def test_extra_key(model) -> None:
    base, experts = model
    experts[2]["head.weight"] = torch.zeros(2, 5)
    refused(base, experts, r"expert 2 has tensor 'head.weight' that the base does not have")
    # Excluded (e.g. a task head) is fine.
    out = merge_state_dicts(base, experts, TaskArithmetic(), exclude=["head.*"])
    assert set(out) == set(base)


def test_shape_mismatch(model) -> None:
    base, experts = model
    experts[0]["lin.weight"] = torch.zeros(6, 4)
    refused(base, experts, r"expert 0: tensor 'lin.weight' has shape \(6, 4\), the base has \(6, 5\)")


def test_dtype_mismatch(model) -> None:
    base, experts = model
    experts[1]["norm.weight"] = experts[1]["norm.weight"].half()
    refused(base, experts, r"expert 1: tensor 'norm.weight' has dtype torch.float16, the base has torch.float32")


class SeesOnlyFinite(MergeMethod):
    """Statistics over the task vectors (as TIES does), then asserts every stack it merges is finite."""

    def prepare(self, task_vectors):
        return {"trim": task_vectors.trim_statistics(0.5)} if self.stats else {}

    def __init__(self, stats: bool) -> None:
        self.stats = stats

    def merge_tensor(self, name, base, task_vectors, route, stats):
        assert bool(torch.isfinite(task_vectors).all()), f"merge_tensor saw non-finite {name}"
        return task_vectors.sum(0)


@pytest.mark.parametrize("stats", [True, False], ids=["statistics-pass", "merge-pass"])
@pytest.mark.parametrize("value, word", [(float("nan"), "NaN"), (float("inf"), "Inf"), (float("-inf"), "Inf")])
def test_non_finite_expert_values(any_model, value: float, word: str, stats: bool) -> None:
    # Values are checked where they are first read (no extra pass over the inputs): by the
    # statistics pass when the method has one, else before the method sees the tensor.
    base, experts = any_model
    experts[2]["emb.weight"][3, 1] = value
    with pytest.raises(MergeInputError, match=rf"expert 2: tensor 'emb.weight' contains {word}"):
        merge_state_dicts(base, experts, SeesOnlyFinite(stats))


@pytest.mark.parametrize("stats", [True, False], ids=["statistics-pass", "merge-pass"])
def test_non_finite_base_values(any_model, stats: bool) -> None:
    base, experts = any_model
    base["lin.bias"][0] = float("nan")
    with pytest.raises(MergeInputError, match=r"base tensor 'lin.bias' contains NaN"):
        merge_state_dicts(base, experts, SeesOnlyFinite(stats))


def test_finite_inputs_whose_difference_overflows_are_named(any_model) -> None:
    base, experts = any_model
    base["norm.weight"] = base["norm.weight"].clone()
    base["norm.weight"][0] = -3.0e38
    for e in experts:
        e["norm.weight"] = e["norm.weight"].clone()
        e["norm.weight"][0] = 3.0e38
    with pytest.raises(MergeInputError, match=r"task vectors of tensor 'norm.weight' .* overflow"):
        merge_state_dicts(base, experts, SeesOnlyFinite(False))


def test_non_finite_in_excluded_tensor_is_not_an_error(model) -> None:
    base, experts = model
    experts[0]["norm.weight"][0] = float("nan")
    out = merge_state_dicts(base, experts, TaskArithmetic(), exclude=["norm.*"])
    assert torch.equal(out["norm.weight"], base["norm.weight"])


def test_neuron_route_on_a_vector(model) -> None:
    base, experts = model
    with pytest.raises(MergeInputError, match=r"tensor 'lin.bias' of shape \(6,\) is routed as neurons"):
        merge_state_dicts(base, experts, Exploding(), routing={"lin.bias": "neuron"})


def test_single_expert_is_allowed(model) -> None:
    base, experts = model
    out = merge_state_dicts(base, experts[:1], NeuroMerging(mask_rate=0.0, lambda_2=1.0))
    # No trim and one expert: points are that expert's task vector.
    assert torch.allclose(out["lin.bias"], experts[0]["lin.bias"])
