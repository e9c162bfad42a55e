"""`StagedFile`: the bytes on disk are exactly what was written, in order or not, direct or not."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from neuroflow.checkpoints.shard_writer import ShardWriter
from neuroflow.checkpoints.staged_file import StagedFile

WINDOW = 8192  # two alignment blocks: small files cross many windows


def payload(size: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def direct_file(path: Path, size: int) -> StagedFile:
    file = StagedFile(path, size, window=WINDOW)
    if not file.direct:
        file.abort()
        pytest.skip(f"O_DIRECT is not available on the filesystem of {path.parent}")
    return file


def test_in_order_writes_cross_windows_and_leave_the_exact_size(tmp_path: Path) -> None:
    data = payload(3 * WINDOW + 1234)
    file = direct_file(tmp_path / "f", len(data))
    for start in range(0, len(data), 1000):  # pieces that straddle the window edges
        file.pwrite(data[start : start + 1000], start)
    assert file.direct
    file.close()
    assert (tmp_path / "f").read_bytes() == data  # the padded last block is cut off


def test_rewrites_of_bytes_on_disk_and_in_the_window(tmp_path: Path) -> None:
    data = bytearray(payload(2 * WINDOW + 500))
    file = direct_file(tmp_path / "f", len(data))
    file.pwrite(bytes(data[: WINDOW + 300]), 0)  # the first window is on disk, 300 bytes staged
    patch = payload(400, seed=1)
    file.pwrite(patch, WINDOW - 100)  # 100 bytes on disk, 300 in the window
    data[WINDOW - 100 : WINDOW + 300] = patch
    early = payload(50, seed=2)
    file.pwrite(early, 10)  # only on disk
    data[10:60] = early
    longer = payload(600, seed=3)
    file.pwrite(longer, WINDOW + 200)  # part rewrite, part new bytes in order
    data[WINDOW + 200 : WINDOW + 800] = longer
    file.pwrite(bytes(data[WINDOW + 800 :]), WINDOW + 800)
    assert file.direct
    file.close()
    assert (tmp_path / "f").read_bytes() == bytes(data)


def test_a_write_that_skips_ahead_turns_the_file_buffered(tmp_path: Path) -> None:
    data = payload(2 * WINDOW + 77)
    file = direct_file(tmp_path / "f", len(data))
    file.pwrite(data[:100], 0)
    file.pwrite(data[WINDOW + 5 :], WINDOW + 5)  # a gap: bytes 100 .. WINDOW + 5 come later
    assert not file.direct
    file.pwrite(data[100 : WINDOW + 5], 100)
    file.close()
    assert (tmp_path / "f").read_bytes() == data


@pytest.mark.parametrize("direct", [True, False])
def test_abort_leaves_the_file_closed(tmp_path: Path, direct: bool) -> None:
    file = StagedFile(tmp_path / "f", 10, direct=direct, window=WINDOW)
    file.pwrite(b"abc", 0)
    file.abort()
    with pytest.raises(OSError):
        os.fstat(file._fd)


def test_window_must_be_aligned(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="multiple of 4096"):
        StagedFile(tmp_path / "f", 10, window=5000)


def test_shard_writer_writes_the_same_bytes_direct_and_buffered(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    tensors = {
        "embed": torch.randn(700, 33, generator=generator).bfloat16(),
        "norm": torch.randn(33, generator=generator),  # float32 first in the file: out of arrival order
        "head": torch.randn(500, 33, generator=generator).bfloat16(),
        "step": torch.tensor(7),
    }
    plan = [(name, tuple(t.shape), t.dtype) for name, t in tensors.items()]
    files = {}
    for direct in (True, False):
        folder = tmp_path / str(direct)
        folder.mkdir()
        writer = ShardWriter(folder, plan, max_shard_size=60_000, direct=direct)
        for name, tensor in tensors.items():
            if name == "head":  # in blocks, the second first
                writer.write(name, tensor[250:], 250, False)
                writer.write(name, tensor[:250], 0, True)
            else:
                writer.write(name, tensor)
        writer.close()
        files[direct] = {path.name: path.read_bytes() for path in sorted(folder.iterdir())}
        loaded = {}
        for path in sorted(folder.glob("*.safetensors")):
            loaded.update(load_file(path))
        assert set(loaded) == set(tensors)
        assert all(torch.equal(loaded[name], tensors[name]) for name in tensors)
    assert len(files[True]) > 2  # several shards and the index
    assert files[True] == files[False]


@pytest.mark.parametrize("size", [3 * WINDOW + 10, WINDOW // 2])  # refused mid-file, or at close
def test_a_filesystem_that_refuses_direct_writes_gets_buffered_ones(tmp_path: Path, monkeypatch, size: int) -> None:
    import errno

    import neuroflow.checkpoints.staged_file as staged_file

    data = payload(size)
    file = direct_file(tmp_path / "f", len(data))
    real = staged_file.os.pwrite

    def refusing(fd, buffer, offset):
        if fd == file._direct_fd:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, buffer, offset)

    monkeypatch.setattr(staged_file.os, "pwrite", refusing)
    for start in range(0, len(data), 3000):
        file.pwrite(data[start : start + 3000], start)
    file.close()
    assert not file.direct
    assert (tmp_path / "f").read_bytes() == data
