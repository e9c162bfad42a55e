"""The engine: progress hooks, info for merge cards, custom methods, dtype/shape contract."""

from __future__ import annotations

import json

import pytest
import torch

from neuroflow.merging import (
    DARE,
    TIES,
    MergeInputError,
    MergeMethod,
    NeuroMerging,
    TaskArithmetic,
    WeightAveraging,
    merge,
    merge_state_dicts,
)

from .helpers import SMALL_SHAPES, random_model


class SignOfSum(MergeMethod):
    """A user-defined method: registration is subclassing (and importing)."""

    name = "sign_of_sum"

    def __init__(self, step: float = 0.01) -> None:
        self.step = step

    def merge_tensor(self, name, base, task_vectors, route, stats):
        return self.step * torch.sign(task_vectors.sum(0))


def test_result_keeps_keys_shapes_dtypes_and_order() -> None:
    base, experts = random_model(SMALL_SHAPES, experts=2, dtype=torch.float16)
    base["ids"] = torch.arange(3)
    for e in experts:
        e["ids"] = torch.arange(3)
    for method in (NeuroMerging(), TIES(), TaskArithmetic(), WeightAveraging(), DARE(drop_rate=0.5)):
        out = merge_state_dicts(base, experts, method)
        assert list(out) == list(base)
        assert all(out[k].shape == base[k].shape and out[k].dtype == base[k].dtype for k in base), method


def test_progress_callable_and_tqdm_like() -> None:
    base, experts = random_model(SMALL_SHAPES, experts=2)
    seen: list[str] = []
    merge_state_dicts(base, experts, TaskArithmetic(), progress=seen.append)
    assert seen == list(base)

    class Bar:
        n = 0

        def update(self, k: int) -> None:
            self.n += k

    bar = Bar()
    merge_state_dicts(base, experts, TaskArithmetic(), progress=bar)
    assert bar.n == len(base)


def test_info_is_json_ready_for_merge_cards() -> None:
    base, experts = random_model(SMALL_SHAPES, experts=3)
    info = merge(base, experts, NeuroMerging(mask_rate=0.8)).info
    json.dumps(info)
    assert info["method"] == "neuromerging"
    assert info["class_path"] == "neuroflow.merging.neuromerging.NeuroMerging"
    assert info["hparams"] == {"mask_rate": 0.8, "lambda_1": 0.0, "lambda_2": "auto"}
    assert info["num_experts"] == 3 and info["routing"] == {"neuron": 2, "point": 2, "skip": 0}
    stats = info["statistics"]
    assert stats["mode"] == "lite" and len(stats["trim"]["sigma_per_task"]) == 3
    assert stats["lambda_2"] == pytest.approx(1.0 / (1.0 - max(stats["trim"]["sigma_per_task"])))
    assert info["merged_numel"] == 12 * 5 + 6 * 5 + 6 + 5


def test_custom_method_subclass() -> None:
    base, experts = random_model({"w": (2, 3)}, experts=2)
    result = merge(base, experts, SignOfSum(step=0.5))
    expected = base["w"] + 0.5 * torch.sign(sum(e["w"] - base["w"] for e in experts))
    assert torch.allclose(result.state_dict["w"], expected)
    assert result.info["hparams"] == {"step": 0.5} and result.info["method"] == "sign_of_sum"
    assert repr(SignOfSum(step=0.5)) == "SignOfSum(step=0.5)"


def test_method_returning_a_wrong_shape_is_reported() -> None:
    class Broken(MergeMethod):
        def merge_tensor(self, name, base, task_vectors, route, stats):
            return task_vectors.sum(0).reshape(-1)

    base, experts = random_model({"w": (2, 3)}, experts=1)
    with pytest.raises(MergeInputError, match=r"Broken returned shape \(6,\) for tensor 'w'"):
        merge_state_dicts(base, experts, Broken())


def test_method_must_be_a_merge_method() -> None:
    with pytest.raises(TypeError, match="MergeMethod"):
        merge_state_dicts({"w": torch.zeros(1)}, [{"w": torch.ones(1)}], "ties")


def test_inputs_are_not_modified() -> None:
    base, experts = random_model(SMALL_SHAPES, experts=2)
    before = [{k: v.clone() for k, v in sd.items()} for sd in (base, *experts)]
    for method in (NeuroMerging(), DARE(drop_rate=0.5), TIES(scope="tensor")):
        merge_state_dicts(base, experts, method)
    for original, now in zip(before, (base, *experts)):
        assert all(torch.equal(original[k], now[k]) for k in original)


def test_parameters_that_require_grad_are_merged_without_autograd() -> None:
    model = torch.nn.Linear(4, 3)
    base = dict(model.named_parameters())
    experts = [{k: torch.nn.Parameter(v.detach() + 0.1 * (i + 1)) for k, v in base.items()} for i in range(2)]
    for method in (NeuroMerging(mask_rate=0.5), TIES(), DARE(drop_rate=0.5), TaskArithmetic()):
        out = merge_state_dicts(base, experts, method)
        assert all(not t.requires_grad for t in out.values())
    out = merge_state_dicts(base, experts, WeightAveraging())
    assert torch.allclose(out["bias"], base["bias"].detach() + 0.15)


def test_mixed_precision_model_ranks_magnitudes_exactly() -> None:
    base32, experts32 = random_model({"a": (6, 5)}, experts=2, seed=12, dtype=torch.float32)
    base64, experts64 = random_model({"b": (4, 5)}, experts=2, seed=13, dtype=torch.float64)
    base = {**base32, **base64}
    experts = [{**e32, **e64} for e32, e64 in zip(experts32, experts64)]
    result = merge(base, experts, TIES(mask_rate=0.5))
    for t in range(2):
        magnitudes = torch.cat([(experts[t]["a"] - base["a"]).double().reshape(-1), (experts[t]["b"] - base["b"]).reshape(-1)]).abs()
        assert result.info["statistics"]["trim"]["thresholds"][t] == magnitudes.kthvalue(25).values.item()
    assert result.state_dict["a"].dtype == torch.float32 and result.state_dict["b"].dtype == torch.float64


def test_everything_excluded_copies_the_base() -> None:
    base, experts = random_model(SMALL_SHAPES, experts=2)
    result = merge(base, experts, NeuroMerging(), exclude=["*"])
    assert all(torch.equal(result.state_dict[k], base[k]) for k in base)
    assert result.info["merged_numel"] == 0 and result.info["statistics"]["lambda_2"] == 1.0


@pytest.mark.parametrize("threads, cores, torch_threads, kernel_threads", [(2, 2, 1, 2), (1, 2, 1, 1), (2, 4, 2, 2), (4, 1, 4, 4)])
def test_threads_filling_every_core_leave_torch_ops_on_one(monkeypatch, threads, cores, torch_threads, kernel_threads) -> None:
    """With the compiled kernels on, `threads` >= cores keeps torch's own ops on one thread (so the
    reader thread does not stall an OpenMP team) while the kernels split over `threads`."""
    from neuroflow.merging import kernels
    from neuroflow.merging import threads as threads_module

    if not kernels.enabled():
        pytest.skip("numba not installed")
    monkeypatch.setattr(threads_module.os, "cpu_count", lambda: cores)
    before = torch.get_num_threads()
    with threads_module.intra_op_threads(threads):
        assert torch.get_num_threads() == torch_threads
        assert kernels._THREADS == kernel_threads
    assert torch.get_num_threads() == before
    assert threads_module.share_cores(threads) == (threads >= cores > 1)
