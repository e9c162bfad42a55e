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
