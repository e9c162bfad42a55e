"""Parity with the authors' implementation (spec/reference/neuromerging_vectors.*), float64, 1e-6."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from neuroflow.merging import NeuroMerging, SafetensorsExperts, SafetensorsFile, merge, neuron_merge
from neuroflow.merging.steps import ties_merge

RTOL = 1e-6


def assert_close(got: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    assert got.dtype == torch.float64, what
    scale = ref.abs().max().item()
    err = (got - ref).abs().max().item() / (scale if scale > 0 else 1.0)
    assert err <= RTOL, f"{what}: relative error {err:.3e} > {RTOL}"


def model_inputs(tensors: dict, meta: dict) -> tuple[dict, list[dict]]:
    names = meta["model_params"]
    base = {n: tensors[f"model.base.{n}"] for n in names}
    tasks = sorted({int(k.split(".")[2]) for k in tensors if k.startswith("model.task.")})
    experts = [{n: tensors[f"model.task.{t}.{n}"] for n in names} for t in tasks]
    return base, experts


def test_kernel_cases_match_psi_orth(reference) -> None:
    tensors, meta = reference
    assert meta["kernel"], "no kernel cases in the reference"
    for case in meta["kernel"]:
        name = case["case"]
        w0 = tensors[f"kernel.{name}.w0"]
        taus = torch.stack([tensors[f"kernel.{name}.tau.{t}"] for t in range(case["tasks"])])
        _, psi_orth = neuron_merge(w0, taus)
        assert_close(psi_orth, tensors[f"kernel.{name}.out"], f"kernel case {name}")


def test_point_cases_match_disjoint_mean(reference) -> None:
    tensors, meta = reference
    for case in meta["ties"]:
        name = case["case"]
        taus = torch.stack([tensors[f"ties.{name}.tau.{t}"] for t in range(case["tasks"])])
        assert_close(ties_merge(taus), tensors[f"ties.{name}.out"], f"ties case {name}")


@pytest.mark.parametrize("case_index", [0, 1])
def test_whole_model_delta_sigma_and_lambda(reference, case_index: int) -> None:
    tensors, meta = reference
    case = meta["model"][case_index]
    base, experts = model_inputs(tensors, meta)

    # lambda_2 = 1 exposes the delta "before lambda" that the reference stores.
    unscaled = merge(base, experts, NeuroMerging(mask_rate=case["mask_rate"], lambda_1=0.0, lambda_2=1.0))
    for name in base:
        delta = unscaled.state_dict[name] - base[name]
        assert_close(delta, tensors[f"model.{case['case']}.delta.{name}"], f"{case['case']} {name}")
    sigma = unscaled.info["statistics"]["trim"]["sigma_per_task"]
    assert sigma == pytest.approx(case["sigma_per_task"], rel=RTOL)

    auto = merge(base, experts, NeuroMerging(mask_rate=case["mask_rate"]))
    assert auto.info["statistics"]["lambda_2"] == pytest.approx(case["lambda_auto"], rel=RTOL)
    for name in base:
        expected = base[name] + case["lambda_auto"] * tensors[f"model.{case['case']}.delta.{name}"]
        assert_close(auto.state_dict[name], expected, f"{case['case']} auto {name}")


def test_streamed_from_safetensors_is_identical(reference, tmp_path) -> None:
    tensors, meta = reference
    base, experts = model_inputs(tensors, meta)
    paths = []
    for i, expert in enumerate(experts):
        paths.append(tmp_path / f"expert{i}.safetensors")
        save_file(expert, str(paths[-1]))
    save_file(base, str(tmp_path / "base.safetensors"))
    method = NeuroMerging(mask_rate=0.8)
    in_memory = merge(base, experts, method).state_dict
    streamed = merge(SafetensorsFile(tmp_path / "base.safetensors"), SafetensorsExperts(paths), method).state_dict
    assert streamed.keys() == in_memory.keys()
    for name in in_memory:
        assert torch.equal(streamed[name], in_memory[name]), name
