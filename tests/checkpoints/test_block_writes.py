"""Tensors merged by row blocks go to the output block by block and give the whole-tensor merge."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import neuroflow.merging.stream as stream_module
import neuroflow.merging.task_vectors as task_vectors_module
from neuroflow.checkpoints import merge_checkpoints, shard_writer
from neuroflow.merging import TIES, NeuroMerging, TaskArithmetic, merge_state_dicts

from .conftest import folder_state
from .test_refusals import resized

# 2 KiB of float32: the tiny LLaMA's embedding and head (128 x 32) go in 16-row blocks, its MLP
# matrices (64 x 32, 32 x 64) in 16- and 8-row blocks.
BLOCK_BYTES = 2048


def spy_writes(monkeypatch) -> list[tuple[str, int, int, bool]]:
    """Record `(name, start, rows, last)` of every write of the shard writer."""
    real, calls = shard_writer.ShardWriter.write, []

    def recording(self, name, tensor, start=0, last=True):
        calls.append((name, start, tensor.shape[0] if tensor.dim() else 0, last))
        return real(self, name, tensor, start, last)

    monkeypatch.setattr(shard_writer.ShardWriter, "write", recording)
    return calls


def cancelling_experts(llama, tmp_path: Path, rows: list[int]) -> list[Path]:
    """Two experts whose LM head moves by -1 everywhere but column 0 of `rows`, where they move by
    +1 and -1 (an exact cancellation): the head's tie fallback is -1."""
    base = folder_state(llama["base"])
    experts = []
    for k, sign in enumerate((1.0, -1.0)):
        folder = tmp_path / f"e{k}"
        shutil.copytree(llama["base"], folder)
        state = {n: t.clone() for n, t in base.items()}
        delta = -torch.ones_like(state["lm_head.weight"])
        delta[rows, 0] = sign
        state["lm_head.weight"] += delta
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
        experts.append(folder)
    return experts


@pytest.mark.parametrize("method", [TaskArithmetic(scaling=0.4), TIES(mask_rate=0.7), NeuroMerging(mask_rate=0.7)], ids=repr)
@pytest.mark.parametrize("shard", [None, "40KB"])
def test_blocks_written_in_place_equal_the_whole_tensor_merge(llama, tmp_path, monkeypatch, method, shard) -> None:
    expected = merge_state_dicts(folder_state(llama["base"]), [folder_state(p) for p in llama["experts"]], method)
    monkeypatch.setattr(task_vectors_module, "ROW_BLOCK_BYTES", BLOCK_BYTES)
    calls = spy_writes(monkeypatch)
    kwargs = {} if shard is None else {"max_shard_size": shard}
    merge_checkpoints(str(llama["base"]), [str(p) for p in llama["experts"]], method, str(tmp_path / "out"), **kwargs)
    got = folder_state(tmp_path / "out")
    assert sorted(got) == sorted(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), name
    head = [(start, rows, last) for name, start, rows, last in calls if name == "lm_head.weight"]
    assert head == [(start, 16, start == 112) for start in range(0, 128, 16)]  # 8 blocks, none assembled


def spy_merges(monkeypatch) -> list[int]:
    """Record the number of entries of every unit the merge stream merges."""
    real, sizes = stream_module.MergeStream._merge_one, []

    def recording(self, name, inputs, recycler, tie=None):
        if name == "lm_head.weight":
            sizes.append(inputs[0].numel())
        return real(self, name, inputs, recycler, tie)

    monkeypatch.setattr(stream_module.MergeStream, "_merge_one", recording)
    return sizes


def test_an_overturned_guess_patches_only_the_ambiguous_entries(llama, tmp_path, monkeypatch) -> None:
    # Row 0, column 0 of the LM head cancels exactly between the two experts (+1, -1); every other
    # entry of the head moves by -1, so the tensor's fallback sign is -1 and the first block,
    # merged under the assumed +1, is wrong in that one entry: it alone is merged again, and the
    # blocks are written once each, in order, after the last one.
    base = folder_state(llama["base"])
    experts = cancelling_experts(llama, tmp_path, rows=[0])
    method = TIES(mask_rate=0.0)
    expected = merge_state_dicts(base, [folder_state(e) for e in experts], method)
    assert expected["lm_head.weight"][0, 0] == base["lm_head.weight"][0, 0] - 1.0  # the -1 side wins the tie
    monkeypatch.setattr(task_vectors_module, "ROW_BLOCK_BYTES", BLOCK_BYTES)
    calls, merged = spy_writes(monkeypatch), spy_merges(monkeypatch)
    merge_checkpoints(str(llama["base"]), [str(e) for e in experts], method, str(tmp_path / "out"))
    got = folder_state(tmp_path / "out")
    assert all(torch.equal(got[n], expected[n]) for n in expected)
    head = [(start, last) for name, start, _, last in calls if name == "lm_head.weight"]
    assert head == [(start, start == 112) for start in range(0, 128, 16)]
    assert merged == [16 * 32] * 8 + [1]


def test_too_many_ambiguous_entries_merge_the_block_again_whole(llama, tmp_path, monkeypatch) -> None:
    # With no room to keep the ambiguous entries, the overturned first block is read and merged
    # again whole after the last block, and written over.
    base = folder_state(llama["base"])
    experts = cancelling_experts(llama, tmp_path, rows=[0])
    method = TIES(mask_rate=0.0)
    expected = merge_state_dicts(base, [folder_state(e) for e in experts], method)
    monkeypatch.setattr(task_vectors_module, "ROW_BLOCK_BYTES", BLOCK_BYTES)
    monkeypatch.setattr(stream_module, "KEEP_FRACTION", 0.0)
    calls, merged = spy_writes(monkeypatch), spy_merges(monkeypatch)
    merge_checkpoints(str(llama["base"]), [str(e) for e in experts], method, str(tmp_path / "out"))
    got = folder_state(tmp_path / "out")
    assert all(torch.equal(got[n], expected[n]) for n in expected)
    head = [(start, last) for name, start, _, last in calls if name == "lm_head.weight"]
    assert head == [(start, False) for start in range(0, 128, 16)] + [(0, True)]
    assert merged == [16 * 32] * 9


@pytest.mark.parametrize("threads", [1, 2])
def test_later_blocks_guess_the_fallback_of_the_blocks_before(llama, tmp_path, monkeypatch, threads) -> None:
    # Every 16-row block of the LM head has one column that cancels exactly (+1, -1) and every
    # other entry moves by -1: the tensor's fallback is -1. Guessing +1 for every block would patch
    # all 8; guessing the sign of the blocks before, only the first is (1 thread: the guess sees
    # every earlier block; 2 threads may see fewer, so more may be patched, same values).
    base = folder_state(llama["base"])
    experts = cancelling_experts(llama, tmp_path, rows=list(range(0, 128, 16)))
    method = TIES(mask_rate=0.0)
    expected = merge_state_dicts(base, [folder_state(e) for e in experts], method)
    assert torch.equal(expected["lm_head.weight"][0::16, 0], base["lm_head.weight"][0::16, 0] - 1.0)
    monkeypatch.setattr(task_vectors_module, "ROW_BLOCK_BYTES", BLOCK_BYTES)
    calls, merged = spy_writes(monkeypatch), spy_merges(monkeypatch)
    merge_checkpoints(str(llama["base"]), [str(e) for e in experts], method, str(tmp_path / "out"), threads=threads)
    got = folder_state(tmp_path / "out")
    assert all(torch.equal(got[n], expected[n]) for n in expected)
    head = [(start, last) for name, start, _, last in calls if name == "lm_head.weight"]
    assert head == [(start, start == 112) for start in range(0, 128, 16)]
    assert merged[:8] == [16 * 32] * 8 and all(size == 1 for size in merged[8:])
    if threads == 1:
        assert merged[8:] == [1]


def test_resized_vocabulary_rows_follow_the_merged_blocks(llama, tmp_path, monkeypatch) -> None:
    grown = resized(llama, tmp_path, "grown", 136)
    method = TIES(mask_rate=0.5)
    experts = [str(llama["experts"][1]), str(grown)]
    merge_checkpoints(str(llama["base"]), experts, method, str(tmp_path / "whole"), vocab="shared_rows")
    monkeypatch.setattr(task_vectors_module, "ROW_BLOCK_BYTES", BLOCK_BYTES)
    calls = spy_writes(monkeypatch)
    merge_checkpoints(str(llama["base"]), experts, method, str(tmp_path / "blocks"), vocab="shared_rows")
    whole, blocks = folder_state(tmp_path / "whole"), folder_state(tmp_path / "blocks")
    assert all(torch.equal(whole[n], blocks[n]) for n in whole) and blocks["lm_head.weight"].shape[0] == 136
    head = [(start, rows, last) for name, start, rows, last in calls if name == "lm_head.weight"]
    assert head[-2:] == [(112, 16, False), (128, 8, True)]  # the expert's 8 extra rows come last
    assert json.loads((tmp_path / "blocks" / "config.json").read_text())["vocab_size"] == 136


def test_writer_blocks_in_any_order_rewrites_and_gaps(tmp_path: Path) -> None:
    from neuroflow.checkpoints import CheckpointError
    from neuroflow.checkpoints.shard_writer import ShardWriter

    value = torch.arange(24, dtype=torch.float32).reshape(6, 4)
    writer = ShardWriter(tmp_path, [("w", (6, 4), torch.float32), ("s", (), torch.float32)])
    writer.write("w", torch.zeros(2, 4), 2, last=False)
    writer.write("w", value[:2], 0, last=False)
    writer.write("w", value[2:4], 2, last=False)  # replaces the zeros
    writer.write("s", torch.tensor(5.0))
    writer.write("w", value[4:], 4, last=True)
    writer.close()
    got = folder_state(tmp_path)
    assert torch.equal(got["w"], value) and got["s"].item() == 5.0

    (tmp_path / "gaps").mkdir()
    writer = ShardWriter(tmp_path / "gaps", [("w", (6, 4), torch.float32)])
    writer.write("w", value[:2], 0, last=False)
    with pytest.raises(CheckpointError, match=r"tensor 'w': rows from 2 of 6 were never written"):
        writer.write("w", value[4:], 4, last=True)
    with pytest.raises(CheckpointError, match=r"tensor 'w': got torch.float32 \(3, 4\) at row 4, planned"):
        writer.write("w", value[:3], 4, last=False)  # past the last row
    with pytest.raises(CheckpointError, match=r"tensor 'w': got torch.float32 \(2, 3\) at row 2"):
        writer.write("w", value[:2, :3], 2, last=False)
    writer.abort()
