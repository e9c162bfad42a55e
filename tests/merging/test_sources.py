"""Expert sources: lazy safetensors files, stored task vectors, per-tensor reads."""

from __future__ import annotations

import torch
from safetensors.torch import save_file

from neuroflow.merging import DictExperts, NeuroMerging, SafetensorsExperts, SafetensorsFile, TIES, merge_state_dicts

from .helpers import SMALL_SHAPES, random_model


def test_safetensors_file_is_a_lazy_mapping(tmp_path) -> None:
    tensors = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2, dtype=torch.bfloat16)}
    save_file(tensors, str(tmp_path / "x.safetensors"))
    lazy = SafetensorsFile(tmp_path / "x.safetensors")
    assert set(lazy) == {"a", "b"} and len(lazy) == 2 and "a" in lazy
    assert lazy.meta("a") == ((2, 3), torch.float32) and lazy.meta("b") == ((2,), torch.bfloat16)
    assert torch.equal(lazy["a"], tensors["a"])


def test_stored_task_vectors_equal_stored_weights(tmp_path) -> None:
    base, experts = random_model(SMALL_SHAPES, experts=3, seed=9)
    weight_paths, vector_paths = [], []
    for i, e in enumerate(experts):
        weight_paths.append(tmp_path / f"w{i}.safetensors")
        vector_paths.append(tmp_path / f"tv{i}.safetensors")
        save_file(e, str(weight_paths[-1]))
        save_file({k: e[k] - base[k] for k in e}, str(vector_paths[-1]))
    method = TIES(mask_rate=0.6)
    from_weights = merge_state_dicts(base, SafetensorsExperts(weight_paths), method)
    from_vectors = merge_state_dicts(base, SafetensorsExperts(vector_paths, task_vectors=True), method)
    in_memory = merge_state_dicts(base, experts, method)
    for k in base:
        assert torch.equal(from_weights[k], in_memory[k])
        assert torch.allclose(from_vectors[k], in_memory[k], atol=1e-12)


def test_experts_are_read_one_tensor_at_a_time() -> None:
    base, experts = random_model(SMALL_SHAPES, experts=2, seed=10)

    class Counting(DictExperts):
        reads: list[tuple[int, str]] = []

        def get(self, i, name):
            self.reads.append((i, name))
            return super().get(i, name)

    source = Counting(experts)
    merge_state_dicts(base, source, NeuroMerging(mask_rate=0.5))
    assert set(source.reads) == {(i, n) for i in range(2) for n in base}
    # Error messages can name experts by task.
    assert DictExperts(experts, names=["trec", "sst2"]).describe(1) == "expert 1 (sst2)"


def test_a_source_overriding_task_vector_is_used_for_every_pass() -> None:
    base, experts = random_model(SMALL_SHAPES, experts=2, seed=11)

    class Doubled(DictExperts):
        """Serves twice the stored task vectors through `task_vector` only."""

        def task_vector(self, i, name, base, dtype, out=None):
            value = 2.0 * (self.get(i, name).to(dtype) - base.to(dtype))
            return value if out is None else out.copy_(value)

    doubled_experts = [{k: base[k] + 2.0 * (e[k] - base[k]) for k in e} for e in experts]
    method = NeuroMerging(mask_rate=0.5)
    got = merge_state_dicts(base, Doubled(experts), method)
    expected = merge_state_dicts(base, doubled_experts, method)
    for k in base:
        assert torch.allclose(got[k], expected[k], atol=1e-12), k


def test_a_lazy_base_is_read_once_per_pass(tmp_path) -> None:
    """Shapes and dtypes of a lazy base come from the file header, not from tensor reads."""
    base, experts = random_model(SMALL_SHAPES, experts=2, seed=12)
    save_file(base, str(tmp_path / "base.safetensors"))

    class CountingFile(SafetensorsFile):
        reads = 0

        def __getitem__(self, name):
            CountingFile.reads += 1
            return super().__getitem__(name)

    lazy = CountingFile(tmp_path / "base.safetensors")
    out = merge_state_dicts(lazy, experts, NeuroMerging(mask_rate=0.5))
    assert all(torch.equal(out[k], merge_state_dicts(base, experts, NeuroMerging(mask_rate=0.5))[k]) for k in base)
    # statistics pass + merge pass, 4 tensors each (values are checked finite as they are first
    # read, not in a pass of their own); small models skip the sample pass
    assert CountingFile.reads == 2 * len(base)
