"""The engine's streaming entry point: order, identity with the in-memory merge, buffer reuse that
never clobbers what a method keeps, the finite check, threads."""

from __future__ import annotations

import pytest
import torch

from neuroflow.merging import TIES, MergeInputError, MergeMethod, NeuroMerging, TaskArithmetic, merge, merge_state_dicts
from neuroflow.merging.engine import merge_stream

SHAPES = {"emb.weight": (40, 8), "a.weight": (16, 8), "a.bias": (16,), "b.weight": (16, 8), "ids": (5,), "norm": (8,)}


def model(experts: int = 3, dtype=torch.bfloat16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    base = {n: torch.randn(s, generator=g).to(dtype) for n, s in SHAPES.items() if n != "ids"}
    base["ids"] = torch.arange(5)
    tuned = [{n: (t + 0.1 * torch.randn(t.shape, generator=g).to(dtype)) if t.is_floating_point() else t.clone()
              for n, t in base.items()} for _ in range(experts)]
    return base, tuned


@pytest.mark.parametrize("method", [TaskArithmetic(), TIES(mask_rate=0.5), NeuroMerging(mask_rate=0.5)], ids=repr)
@pytest.mark.parametrize("prefetch", [False, True])
def test_stream_matches_the_in_memory_merge(method, prefetch) -> None:
    base, experts = model()
    expected = merge(base, experts, method)
    stream = merge_stream(base, experts, method, prefetch=prefetch, threads=1)
    assert stream.info == expected.info  # complete before the first tensor
    got = list(stream)
    assert [n for n, _ in got] == list(base)
    for name, tensor in got:
        assert torch.equal(tensor, expected.state_dict[name]) and tensor.dtype == base[name].dtype
    assert torch.equal(dict(got)["ids"], base["ids"])


class Hoarder(MergeMethod):
    """Keeps every stack and returns a view of it: recycled buffers must not change what it kept."""

    name = "hoarder"

    def __init__(self) -> None:
        self.kept: dict[str, torch.Tensor] = {}

    def merge_tensor(self, name, base, task_vectors, route, stats):
        self.kept[name] = task_vectors
        return task_vectors[0]


class Viewer(MergeMethod):
    """Returns a view of the stack and keeps none: the engine must finish with it before reuse."""

    name = "viewer"

    def merge_tensor(self, name, base, task_vectors, route, stats):
        return task_vectors[-1]


def test_buffers_a_method_keeps_are_never_reused() -> None:
    base, experts = model()
    base.update({f"more{i}.weight": torch.randn(16, 8).bfloat16() for i in range(4)})
    for e in experts:
        e.update({f"more{i}.weight": base[f"more{i}.weight"] + 0.5 for i in range(4)})
    method = Hoarder()
    merged = merge_state_dicts(base, experts, method)
    for name, stack in method.kept.items():
        expected = torch.stack([e[name].float() - base[name].float() for e in experts])
        assert torch.equal(stack, expected), name
        assert torch.equal(merged[name], (base[name].float() + expected[0]).to(base[name].dtype))
    viewed = merge_state_dicts(base, experts, Viewer())
    for name in method.kept:
        assert torch.equal(viewed[name], experts[-1][name]), name


def test_recycling_does_not_change_results() -> None:
    base, experts = model(experts=4, seed=3)
    method = NeuroMerging(mask_rate=0.6)
    with_reuse = dict(merge_stream(base, experts, method, recycle=True))
    without = dict(merge_stream(base, experts, method, recycle=False))
    assert all(torch.equal(with_reuse[n], without[n]) for n in base)


def test_non_finite_merge_is_refused_naming_tensor_and_method() -> None:
    base, experts = model(dtype=torch.float16)
    for e in experts:
        e["norm"] = torch.full((8,), 60000.0, dtype=torch.float16)
    with pytest.raises(MergeInputError, match=r"TaskArithmetic\(scaling=1.0\) produced Inf values in merged tensor 'norm'"):
        merge_state_dicts(base, experts, TaskArithmetic(scaling=1.0))
    stream = merge_stream(base, experts, TaskArithmetic(scaling=1.0))
    names = []
    with pytest.raises(MergeInputError, match="'norm'"):
        for name, _ in stream:
            names.append(name)
    assert "norm" not in names


def test_threads_are_set_for_the_maths_and_restored() -> None:
    before = torch.get_num_threads()
    seen = []

    class Probe(MergeMethod):
        name = "probe"

        def merge_tensor(self, name, base, task_vectors, route, stats):
            seen.append(torch.get_num_threads())
            return task_vectors.sum(0)

    base, experts = model()
    merge_state_dicts(base, experts, Probe(), threads=1)
    assert set(seen) == {1} and torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads"):
        merge_state_dicts(base, experts, Probe(), threads=0)


def test_buffers_are_reused_along_the_stream() -> None:
    # Layers repeat their shapes: stacks, base copies and merged outputs of a layer are the next
    # layer's buffers once the consumer dropped them (an earlier version never reused any).
    base, experts = model()
    base.update({f"more{i}.weight": torch.randn(16, 8).bfloat16() for i in range(6)})
    for e in experts:
        e.update({f"more{i}.weight": base[f"more{i}.weight"] + 0.25 for i in range(6)})
    expected = merge_state_dicts(base, experts, TIES(mask_rate=0.5))
    stream = merge_stream(base, experts, TIES(mask_rate=0.5), threads=1)
    for name, tensor in stream:  # each merged tensor dropped after the check, as a writer does
        assert torch.equal(tensor, expected[name]), name
    assert stream.task_vectors.recycler.reused >= 12


PARALLEL_METHODS = [TaskArithmetic(), TIES(mask_rate=0.5), NeuroMerging(mask_rate=0.5)]


@pytest.mark.parametrize("method", PARALLEL_METHODS + ["dare", "tsv", "iso"], ids=repr)
@pytest.mark.parametrize("threads", [2, 3])
def test_parallel_workers_give_the_sequential_merge(method, threads) -> None:
    from neuroflow.merging import DARE, IsoC, TSVMerge, kernels

    method = {"dare": DARE(drop_rate=0.5, seed=1), "tsv": TSVMerge(), "iso": IsoC()}.get(method, method)
    base, experts = model(experts=4)
    expected = merge(base, experts, method)
    stream = merge_stream(base, experts, method, threads=threads)
    assert stream.task_vectors.workers == (threads if kernels.enabled() else 1)
    got = dict(stream)
    assert list(got) == list(base)
    assert all(torch.equal(got[n], expected.state_dict[n]) for n in base)


class Overlap(MergeMethod):
    """Task arithmetic that records how many of its merges ran at the same time."""

    name = "overlap"

    def __init__(self) -> None:
        import threading

        self.lock, self.running, self.most = threading.Lock(), 0, 0

    def merge_tensor(self, name, base, task_vectors, route, stats):
        import time

        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(0.02)
        with self.lock:
            self.running -= 1
        return task_vectors.sum(dim=0)


def test_workers_overlap_units_but_run_big_ones_alone(monkeypatch) -> None:
    from neuroflow.merging import kernels, stream

    if not kernels.enabled():
        pytest.skip("workers need the compiled kernels")
    base, experts = model(experts=2)
    method = Overlap()
    assert torch.equal(dict(merge_stream(base, experts, method, threads=2))["a.weight"],
                       merge(base, experts, TaskArithmetic(scaling=1.0)).state_dict["a.weight"])
    assert method.most == 2
    monkeypatch.setattr(stream, "PREFETCH_BYTES", 0)  # every unit is "big": one at a time
    method = Overlap()
    list(merge_stream(base, experts, method, threads=2))
    assert method.most == 1


def test_no_thread_count_gives_both_passes_every_torch_thread(monkeypatch) -> None:
    # threads=None once counted torch's threads inside `intra_op_threads`, which holds torch to one
    # thread when the kernels share the cores: the statistics pass then ran on one worker.
    from neuroflow.merging import kernels
    from neuroflow.merging.task_vectors import TaskVectors

    if not kernels.enabled():
        pytest.skip("workers need the compiled kernels")
    calls = []
    original = TaskVectors.map_chunks
    monkeypatch.setattr(TaskVectors, "map_chunks", lambda self, fn, workers, *a, **k: calls.append(workers) or original(self, fn, workers, *a, **k))
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        base, experts = model(experts=3)
        stream = merge_stream(base, experts, TIES(mask_rate=0.5), threads=None)
        got = dict(stream)
    finally:
        torch.set_num_threads(before)
    assert calls and set(calls) == {2}  # the statistics pass
    assert stream.task_vectors.workers == 2  # the merge pass
    assert all(torch.equal(got[n], merge(base, experts, TIES(mask_rate=0.5)).state_dict[n]) for n in base)


@pytest.mark.parametrize("method", [TaskArithmetic(), TIES(mask_rate=0.5)], ids=repr)  # merge pass, statistics pass
def test_worker_errors_name_the_tensor_and_stop_the_merge(method) -> None:
    base, experts = model(experts=3)
    experts[1]["b.weight"][2, 3] = float("nan")
    with pytest.raises(MergeInputError, match="b.weight"):
        list(merge_stream(base, experts, method, threads=2))
