"""MergeKit YAML configs map to the equivalent neuroflow merge, or name the keys they cannot honour."""

from __future__ import annotations

import pytest

from neuroflow.checkpoints import CheckpointError, from_mergekit
from neuroflow.merging import DARE, TIES, TaskArithmetic, WeightAveraging


def config(method: str, models: list, parameters: dict | None = None, **top) -> dict:
    data = {"merge_method": method, "base_model": "base", "models": models, **top}
    if parameters is not None:
        data["parameters"] = parameters
    return data


def test_ties_with_density_and_base_listed(tmp_path) -> None:
    path = tmp_path / "ties.yml"
    path.write_text(
        "merge_method: ties\nbase_model: base\ndtype: bfloat16\nparameters:\n  normalize: true\n"
        "models:\n  - model: base\n  - model: a\n    parameters: {weight: 0.5, density: 0.2}\n"
        "  - model: b\n    parameters: {weight: 0.5, density: 0.2}\n"
    )
    plan = from_mergekit(path)
    assert plan.base == "base" and plan.experts == ["a", "b"] and plan.dtype == "bfloat16"
    assert isinstance(plan.method, TIES)
    assert plan.method.hparams() == {"mask_rate": pytest.approx(0.8), "scope": "tensor", "scaling": 1.0}


@pytest.mark.parametrize(
    "data, cls, hparams",
    [
        (config("task_arithmetic", [{"model": "a", "parameters": {"weight": 0.3}}, {"model": "b", "parameters": {"weight": 0.3}}]),
         TaskArithmetic, {"scaling": 0.3}),
        (config("task_arithmetic", ["a", "b"], {"weight": 1.0, "lambda": 0.5, "normalize": True}), TaskArithmetic, {"scaling": 0.25}),
        (config("dare_linear", ["a", "b"], {"weight": 0.5, "density": 0.3}), DARE,
         {"drop_rate": pytest.approx(0.7), "seed": 0, "then": "task_arithmetic", "scaling": 0.5}),
        (config("dare_ties", ["a", "b"], {"weight": 0.5, "density": 0.4, "normalize": True}), DARE,
         {"drop_rate": pytest.approx(0.6), "seed": 0, "then": "ties", "scaling": 1.0}),
        (config("linear", ["a", "b"], {"weight": 1.0}), WeightAveraging, {}),
        (config("linear", ["base", "a", "b"], {"weight": 1.0}), TaskArithmetic, {"scaling": pytest.approx(1 / 3)}),
    ],
)
def test_supported_methods(data, cls, hparams) -> None:
    plan = from_mergekit(data)
    assert type(plan.method) is cls and plan.method.hparams() == hparams and plan.notes


def test_refusal_names_every_key_it_cannot_honour() -> None:
    data = config(
        "ties",
        [{"model": "a", "parameters": {"weight": 0.3, "density": 0.5}}, {"model": "b", "parameters": {"weight": 0.7, "density": 0.4}}],
        slices=[{"sources": []}],
        tokenizer_source="union",
    )
    with pytest.raises(CheckpointError) as info:
        from_mergekit(data)
    message = str(info.value)
    assert message.startswith("cannot honour these MergeKit keys: ")
    for needle in ("slices", "tokenizer_source: 'union'", "models[*].parameters.density", "models[0]: 0.5, models[1]: 0.4"):
        assert needle in message, needle
    # A common weight cancels under TIES' normalization; differing ones weigh the disjoint mean.
    assert "models[*].parameters.weight (per-model values that differ: models[0]: 0.3, models[1]: 0.7" in message


@pytest.mark.parametrize(
    "data, needle",
    [
        (config("slerp", ["a"]), "merge_method: 'slerp'"),
        (config("task_arithmetic", [{"model": "a", "parameters": {"weight": 0.3}}, {"model": "b", "parameters": {"weight": 0.6}}]),
         "models[*].parameters.weight (per-model values that differ"),
        (config("task_arithmetic", ["a"]), "models[0].parameters.weight (required"),
        (config("dare_ties", ["a"], {"weight": 1.0, "density": 0.5}), "parameters.normalize"),
        (config("ties", ["a"], {"density": 0.5, "normalize": False}), "parameters.normalize: false"),
        (config("ties", ["a"], {"density": [0.1, 0.5]}), "parameters.density (per-layer"),
        (config("ties", ["a+lora"], {"density": 0.5}), "model+lora"),
        ({"merge_method": "ties", "models": ["a"]}, "base_model (required"),
        (config("ties", ["a"], {"density": 0.5}, dtype="float64"), "dtype: 'float64'"),
    ],
)
def test_refusals(data, needle) -> None:
    with pytest.raises(CheckpointError) as info:
        from_mergekit(data)
    assert needle in str(info.value)
