"""Checkpoint folders read row blocks alone, and folder merges by row blocks equal in-memory merges."""

from __future__ import annotations

import pytest
import torch

import neuroflow.merging.task_vectors as task_vectors_module
from neuroflow.checkpoints.folder import CheckpointFolder
from neuroflow.checkpoints.merge import merge_checkpoints
from neuroflow.merging import TIES, NeuroMerging, TaskArithmetic, merge_state_dicts

from .conftest import folder_state


@pytest.mark.parametrize("kind", ["base", "base_sharded"])
def test_read_rows_equals_slicing_the_tensor(llama, kind) -> None:
    folder = CheckpointFolder(llama[kind])
    for name in list(folder)[:6]:
        whole = folder[name]
        if whole.dim() == 0 or whole.shape[0] < 3:
            continue
        assert torch.equal(folder.read_rows(name, 1, 3), whole[1:3]), name
        assert folder.read_rows(name, whole.shape[0] - 1, whole.shape[0] + 5).shape[0] == 1  # clipped like a slice


def test_bin_folder_read_rows(tmp_path) -> None:
    tensor = torch.arange(24.0).reshape(6, 4)
    torch.save({"w": tensor}, tmp_path / "pytorch_model.bin")
    assert torch.equal(CheckpointFolder(tmp_path).read_rows("w", 2, 5), tensor[2:5])


@pytest.mark.parametrize("method", [TaskArithmetic(0.5), TIES(mask_rate=0.7), NeuroMerging(mask_rate=0.7)], ids=repr)
def test_folder_merge_by_row_blocks_equals_in_memory_merge(llama, tmp_path, monkeypatch, method) -> None:
    base = folder_state(llama["base"])
    expected = merge_state_dicts(base, [folder_state(p) for p in llama["experts"]], method)  # whole tensors
    monkeypatch.setattr(task_vectors_module, "ROW_BLOCK_BYTES", 2048)  # the embedding: 8-row blocks
    out = tmp_path / "out"
    merge_checkpoints(str(llama["base"]), [str(p) for p in llama["sharded"]], method, str(out))
    merged = folder_state(out)
    for name, tensor in expected.items():
        if name in merged:
            assert torch.equal(merged[name], tensor), name


def test_read_buffers_are_reused_only_once_their_tensor_is_gone(tmp_path) -> None:
    from safetensors.torch import save_file

    from neuroflow.checkpoints import safetensors_io

    tensors = {"a": torch.randn(128, 256), "b": torch.randn(128, 256)}
    save_file(tensors, str(tmp_path / "m.safetensors"))
    header = safetensors_io.read_header(tmp_path / "m.safetensors")
    first = safetensors_io.read_tensor(tmp_path / "m.safetensors", header.entries["a"])
    flat = first.reshape(-1)  # a view that outlives the tensor
    address = first.data_ptr()
    del first
    second = safetensors_io.read_tensor(tmp_path / "m.safetensors", header.entries["b"])
    assert second.data_ptr() != address and torch.equal(flat.reshape(128, 256), tensors["a"])
    del flat, second
    before = safetensors_io._BUFFERS.reused
    third = safetensors_io.read_tensor(tmp_path / "m.safetensors", header.entries["a"])
    assert safetensors_io._BUFFERS.reused == before + 1 and torch.equal(third, tensors["a"])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16, torch.float64])
def test_read_strided_equals_striding_the_tensor(tmp_path, dtype) -> None:
    from safetensors.torch import save_file

    from neuroflow.checkpoints import safetensors_io

    # An odd-sized first tensor puts the second at an offset that no page boundary aligns.
    tensors = {"a": torch.randn(3).to(dtype), "b": torch.randn(37, 53).to(dtype)}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    folder = CheckpointFolder(tmp_path)
    for name, tensor in tensors.items():
        for stride in (1, 2, 7, 1000, 5000):
            assert torch.equal(folder.read_strided(name, stride), tensor.reshape(-1)[::stride]), (name, stride)
    # A sample of the leading rows only (experts with a resized vocabulary).
    assert torch.equal(folder.read_strided("b", 5, numel=10 * 53), tensors["b"][:10].reshape(-1)[::5])
    header = safetensors_io.read_header(tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="stride"):
        safetensors_io.read_strided(tmp_path / "model.safetensors", header.entries["b"], 0)


def test_statistics_sample_reads_only_the_sampled_scalars(llama, monkeypatch) -> None:
    from neuroflow.checkpoints import folder as folder_module
    from neuroflow.checkpoints.source import checkpoint_experts
    from neuroflow.merging.routing import routing_from_state_dict
    from neuroflow.merging.task_vectors import TaskVectors

    base = CheckpointFolder(llama["base"])
    experts = [CheckpointFolder(p) for p in llama["sharded"]]
    source = checkpoint_experts(base, experts, [str(p) for p in llama["sharded"]])
    state = folder_state(llama["base"])
    routing = routing_from_state_dict(state)
    in_memory = TaskVectors(state, _dict_experts(llama["sharded"]), routing)
    vectors = TaskVectors(base, source, routing)
    whole_reads = []
    original = folder_module.read_tensor
    monkeypatch.setattr(folder_module, "read_tensor", lambda *a, **k: whole_reads.append(a[1].name) or original(*a, **k))
    sampled = list(vectors.chunks(stride=7))
    assert whole_reads == []  # every sample came from strided reads, no tensor was read whole
    expected = list(in_memory.chunks(stride=7))
    assert len(sampled) == len(expected)
    assert all(torch.equal(a, b) for a, b in zip(sampled, expected))
    list(vectors.chunks(stride=1))
    assert whole_reads  # the full pass reads tensors (the check above can fail)


def _dict_experts(paths):
    from neuroflow.merging.sources import DictExperts

    return DictExperts([folder_state(p) for p in paths])


def test_map_chunks_gives_every_block_in_order_from_worker_threads(llama) -> None:
    import threading

    from neuroflow.merging.routing import resolve_routing
    from neuroflow.merging.task_vectors import TaskVectors

    state = folder_state(llama["base"])
    routing = resolve_routing(state)
    vectors = TaskVectors(state, _dict_experts(llama["experts"]), routing)
    threads = set()

    def fn(block):
        threads.add(threading.current_thread().name)
        return block.clone()

    mapped = list(vectors.map_chunks(fn, workers=2, chunk_size=1 << 10))
    expected = list(vectors.chunks(chunk_size=1 << 10))
    assert len(mapped) == len(expected) > len(vectors.names)
    assert all(torch.equal(a, b) for a, b in zip(mapped, expected))
    assert threads and all(name.startswith("stats-worker") for name in threads)
