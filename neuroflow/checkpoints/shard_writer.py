"""Write a model as `save_pretrained`-style safetensors shards while its tensors are produced.

Every output tensor's name, shape and dtype is known before the first one is merged (from the
base's headers), so the shard layout is planned up front, greedily in tensor order like
`huggingface_hub.split_torch_state_dict_into_shards` (a shard closes before the tensor that would
take it over `max_shard_size`; a larger tensor gets a shard of its own). Each shard's header is then
written first and every tensor's bytes go to their offset as it arrives (through a `StagedFile`:
an 8 MiB window written with `O_DIRECT`, never the page cache), and the shard count (hence the
`model-0000k-of-0000n` names) is known from the start. Within a shard, data is laid out by
decreasing item size so every tensor is aligned.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from neuroflow.checkpoints.errors import CheckpointError
from neuroflow.checkpoints.safetensors_io import CODES
from neuroflow.checkpoints.staged_file import StagedFile

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(size: str | int) -> int:
    """Bytes in `size`: an int, or "5GB" / "500MB" / "50KB" (powers of 10, as transformers) or
    "2GiB" (powers of 2).

    Args:
        size: the size.
    """
    if isinstance(size, int) and not isinstance(size, bool):
        value = size
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(size))
        if not match or match[2].upper() not in _UNITS:
            raise CheckpointError(f"max_shard_size must be like '5GB', '500MB' or '2GiB', got {size!r}")
        value = int(float(match[1]) * _UNITS[match[2].upper()])
    if value <= 0:
        raise CheckpointError(f"max_shard_size must be positive, got {size!r}")
    return value


@dataclass(frozen=True)
class _Slot:
    shard: int
    offset: int  # absolute, in the shard file
    nbytes: int
    dtype: torch.dtype
    shape: tuple[int, ...]


def plan_shards(tensors: Sequence[tuple[str, tuple[int, ...], torch.dtype]], max_shard_size: int) -> list[list[int]]:
    """Indices of `tensors` per shard, greedily in order.

    Args:
        tensors: `(name, shape, dtype)` of every output tensor, in write order.
        max_shard_size: bytes of tensor data per shard at most (unless one tensor is larger).
    """
    shards: list[list[int]] = []
    current: list[int] = []
    size = 0
    for index, (_, shape, dtype) in enumerate(tensors):
        nbytes = math.prod(shape) * dtype.itemsize
        if current and size + nbytes > max_shard_size:
            shards.append(current)
            current, size = [], 0
        current.append(index)
        size += nbytes
    if current or not shards:
        shards.append(current)
    return shards


class ShardWriter:
    """Writes planned tensors into shard files inside `folder` as they arrive.

    Args:
        folder: an existing (temporary) folder.
        tensors: `(name, shape, dtype)` of every output tensor.
        max_shard_size: "5GB"-style string or bytes.
        metadata: safetensors `__metadata__` (default `{"format": "pt"}`, as transformers writes).
        direct: write the shards through `O_DIRECT` where the filesystem allows it (see
            `StagedFile`; False: through the page cache).

    Attributes:
        files: the shard file names.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        tensors: Sequence[tuple[str, tuple[int, ...], torch.dtype]],
        max_shard_size: str | int = "5GB",
        metadata: dict[str, str] | None = None,
        direct: bool = True,
    ) -> None:
        self.folder = Path(folder)
        self.direct = direct
        self.metadata = {"format": "pt"} if metadata is None else dict(metadata)
        shards = plan_shards(tensors, parse_size(max_shard_size))
        count = len(shards)
        self.files = [SINGLE_FILE] if count == 1 else [f"model-{k + 1:05d}-of-{count:05d}.safetensors" for k in range(count)]
        self._slots: dict[str, _Slot] = {}
        self._headers: list[bytes] = []
        self._sizes: list[int] = []
        self.total_size = 0
        for k, members in enumerate(shards):
            # Decreasing item size keeps every offset a multiple of its dtype's size.
            layout = sorted(members, key=lambda i: -tensors[i][2].itemsize)
            header: dict[str, object] = {"__metadata__": self.metadata}
            offset, slots = 0, []
            for i in layout:
                name, shape, dtype = tensors[i]
                if dtype not in CODES:
                    raise CheckpointError(f"tensor {name!r}: dtype {dtype} cannot be written to safetensors")
                nbytes = math.prod(shape) * dtype.itemsize
                header[name] = {"dtype": CODES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
                slots.append((name, offset, nbytes, dtype, tuple(shape)))
                offset += nbytes
            raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
            raw += b" " * (-len(raw) % 8)
            start = 8 + len(raw)
            for name, rel, nbytes, dtype, shape in slots:
                if name in self._slots:
                    raise CheckpointError(f"tensor {name!r} is planned twice")
                self._slots[name] = _Slot(k, start + rel, nbytes, dtype, shape)
            self._headers.append(struct.pack("<Q", len(raw)) + raw)
            self._sizes.append(start + offset)
            self.total_size += offset
        self._files: dict[int, StagedFile] = {}
        self._left = [len(members) for members in shards]
        self._written: set[str] = set()
        self._done: set[int] = set()
        self._rows: dict[str, dict[int, int]] = {}  # blocks written so far: start -> stop

    def _file(self, shard: int) -> StagedFile:
        if shard not in self._files:
            # 0o666 & ~umask: the output is as readable as any file the user creates.
            file = StagedFile(self.folder / self.files[shard], self._sizes[shard], direct=self.direct)
            file.pwrite(self._headers[shard], 0)
            self._files[shard] = file
        return self._files[shard]

    def write(self, name: str, tensor: Tensor, start: int = 0, last: bool = True) -> None:
        """Write one planned tensor (on the CPU, with the planned dtype), or a block of its rows.

        A tensor may come in blocks of rows, in any order, a block again to replace it; the one
        with `last` set completes the tensor, and every row must have been written by then.

        Args:
            name: the tensor name.
            tensor: its value (the planned shape), or rows `start : start + len(tensor)` of it.
            start: the first row `tensor` holds (0 for the whole tensor).
            last: the tensor's final block (True for a whole tensor).
        """
        slot = self._slots.get(name)
        if slot is None:
            raise CheckpointError(f"tensor {name!r} was not planned for this output")
        if name in self._written:
            raise CheckpointError(f"tensor {name!r} written twice")
        whole = start == 0 and tuple(tensor.shape) == slot.shape
        rows_fit = bool(slot.shape) and tuple(tensor.shape[1:]) == slot.shape[1:] and 0 <= start <= start + tensor.shape[0] <= slot.shape[0]
        if tensor.dtype != slot.dtype or not (whole or rows_fit):
            got = f"{tensor.dtype} {tuple(tensor.shape)}" + ("" if start == 0 else f" at row {start}")
            raise CheckpointError(f"tensor {name!r}: got {got}, planned {slot.dtype} {slot.shape}")
        file = self._file(slot.shard)
        if tensor.numel():
            offset = slot.offset + start * (slot.nbytes // slot.shape[0] if slot.shape else 0)
            file.pwrite(memoryview(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()), offset)
        if not whole or not last:
            self._rows.setdefault(name, {})[start] = start + tensor.shape[0]
        if not last:
            return
        if name in self._rows:
            self._check_rows(name, slot.shape[0])
        self._written.add(name)
        self._left[slot.shard] -= 1
        if self._left[slot.shard] == 0:
            self._files.pop(slot.shard).close()
            self._done.add(slot.shard)

    def _check_rows(self, name: str, rows: int) -> None:
        """Every row of `name` was written by one of its blocks."""
        covered = 0
        for start, stop in sorted(self._rows.pop(name).items()):
            if start > covered:
                break
            covered = max(covered, stop)
        if covered < rows:
            raise CheckpointError(f"tensor {name!r}: rows from {covered} of {rows} were never written")

    def close(self) -> dict[str, str]:
        """Finish: every planned tensor must have been written; writes the index when sharded.

        Returns:
            the weight map (tensor name -> file).
        """
        missing = [n for n in self._slots if n not in self._written]
        if missing:
            self.abort()
            raise CheckpointError(f"output incomplete: tensor {missing[0]!r} was never written")
        for shard in range(len(self.files)):
            if shard not in self._done:
                self._file(shard)  # a shard of zero tensors still exists
        for shard in list(self._files):
            self._files.pop(shard).close()
        weight_map = {name: self.files[slot.shard] for name, slot in self._slots.items()}
        if len(self.files) > 1:
            index = {"metadata": {"total_size": self.total_size}, "weight_map": dict(sorted(weight_map.items()))}
            fd = os.open(self.folder / INDEX_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(json.dumps(index, indent=2) + "\n")
        return weight_map

    def abort(self) -> None:
        """Close open files without finishing (the caller removes the folder)."""
        for shard in list(self._files):
            self._files.pop(shard).abort()
