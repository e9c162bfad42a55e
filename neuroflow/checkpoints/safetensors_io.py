"""safetensors files read with plain file reads: the header once, then one tensor at a time.

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON (name -> dtype,
shape, `data_offsets` relative to the end of the header; `__metadata__`), then the tensor bytes.
Tensors are read with `readinto` into a fresh buffer instead of through a memory map: a mapped
file's touched pages count in the process's RSS until it is unmapped, so merging T large
checkpoints through `safe_open` makes RSS grow to the size of every input; a read buffer is freed
with the tensor (the data stays in the kernel's page cache, which is not the process's memory).
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from neuroflow.checkpoints.errors import CheckpointError
from neuroflow.merging.recycler import Recycler
from neuroflow.merging.sources import SAFETENSORS_DTYPES

DTYPES: dict[str, torch.dtype] = {**SAFETENSORS_DTYPES, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
CODES: dict[torch.dtype, str] = {dtype: code for code, dtype in DTYPES.items()}
# safetensors itself refuses headers above 100 MB; a larger length means a corrupt file.
_MAX_HEADER = 100_000_000


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lies in its file.

    Attributes:
        name: the tensor name.
        dtype: its torch dtype.
        shape: its shape.
        start: absolute byte offset of its data in the file.
        nbytes: length of its data.
    """

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    nbytes: int


@dataclass(frozen=True)
class SafetensorsHeader:
    """The parsed header of one safetensors file.

    Attributes:
        path: the file.
        entries: tensor name -> entry, in data-offset order.
        metadata: the `__metadata__` strings.
    """

    path: Path
    entries: dict[str, TensorEntry]
    metadata: dict[str, str]


def read_header(path: str | os.PathLike) -> SafetensorsHeader:
    """Parse and check the header of `path` (reads only the header bytes).

    Args:
        path: a `.safetensors` file.

    Raises:
        CheckpointError: missing file, or a header that is not valid safetensors, naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: safetensors file not found")
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"{path}: corrupt safetensors header (file of {size} bytes is shorter than 8)")
        (length,) = struct.unpack("<Q", prefix)
        if length > _MAX_HEADER or 8 + length > size:
            raise CheckpointError(f"{path}: corrupt safetensors header (declares {length} header bytes, file has {size})")
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("not a JSON object")
    except (UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(f"{path}: corrupt safetensors header ({err})") from None
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + length
    entries = []
    for name, info in header.items():
        try:
            code, shape, (begin, end) = info["dtype"], tuple(int(s) for s in info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: corrupt safetensors header (bad entry for tensor {name!r})") from None
        if code not in DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {code}")
        dtype = DTYPES[code]
        nbytes = math.prod(shape) * dtype.itemsize
        if end - begin != nbytes or begin < 0 or data_start + end > size:
            raise CheckpointError(
                f"{path}: corrupt safetensors header (tensor {name!r}: offsets {begin}..{end} do not hold "
                f"{code} {list(shape)} inside a file of {size} bytes)"
            )
        entries.append(TensorEntry(name, dtype, shape, data_start + begin, nbytes))
    entries.sort(key=lambda e: e.start)
    return SafetensorsHeader(path, {e.name: e for e in entries}, dict(metadata))


# Read buffers come back when the tensor read into one (and every view of it) dies, and are reused
# for the next read of the same shape and dtype: a recycled buffer skips the page faults a fresh one
# costs, which are as expensive as the copy from the page cache. 64 MiB holds the row blocks and the
# common layer shapes; a larger cap only kept idle buffers resident (1.26B peak +0.07 GiB at 256 MiB).
_BUFFERS = Recycler(64 << 20)


def read_tensor(path: str | os.PathLike, entry: TensorEntry, rows: tuple[int, int] | None = None) -> Tensor:
    """The tensor `entry` of `path` (or rows `start:stop` of its first dimension, which lie
    contiguously in the file), read into a private (unmapped) buffer.

    Args:
        path: the file the entry belongs to.
        entry: from `read_header(path)`.
        rows: `(start, stop)` of the first dimension to read (None: the whole tensor).
    """
    shape, offset, nbytes = entry.shape, entry.start, entry.nbytes
    if rows is not None:
        if not shape:
            raise CheckpointError(f"{path}: tensor {entry.name!r} is a scalar; it has no rows to read")
        start, stop = max(0, min(rows[0], shape[0])), max(0, min(rows[1], shape[0]))
        stop = max(start, stop)
        row_bytes = math.prod(shape[1:]) * entry.dtype.itemsize
        shape, offset, nbytes = (stop - start, *shape[1:]), entry.start + start * row_bytes, (stop - start) * row_bytes
    tensor = _BUFFERS.empty(shape, entry.dtype) if nbytes >= 1 << 16 else torch.empty(shape, dtype=entry.dtype)
    view = memoryview(tensor.reshape(-1).view(torch.uint8).numpy()) if nbytes else memoryview(b"")
    with open(path, "rb", buffering=0) as handle:
        handle.seek(offset)
        done = 0
        while done < nbytes:
            got = handle.readinto(view[done:])
            if not got:
                raise CheckpointError(f"{path}: file ends inside tensor {entry.name!r} (truncated?)")
            done += got
    del view  # it holds a view of the buffer, which would keep it from the pool
    return tensor


_INT_OF_SIZE = {1: np.int8, 2: np.int16, 4: np.int32, 8: np.int64}


def read_strided(path: str | os.PathLike, entry: TensorEntry, stride: int, numel: int | None = None) -> Tensor:
    """Every `stride`-th scalar of tensor `entry` (flat positions 0, stride, 2 * stride, ...), as a
    1-D tensor, reading only the pages that hold them.

    A statistics sample takes one scalar in thousands: reading whole tensors for it costs as much as
    a full pass. The byte range is mapped just for this copy and unmapped at once, so no page stays
    in the process's RSS.

    Args:
        path: the file the entry belongs to.
        entry: from `read_header(path)`.
        stride: distance between sampled scalars (>= 1).
        numel: take the sample among the first `numel` scalars only (None: all of them).
    """
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    total = math.prod(entry.shape) if numel is None else min(numel, math.prod(entry.shape))
    count = -(-total // stride)
    itemsize = entry.dtype.itemsize
    if count == 0:
        return torch.empty(0, dtype=entry.dtype)
    first = entry.start
    end = first + ((count - 1) * stride + 1) * itemsize
    offset = first // mmap.ALLOCATIONGRANULARITY * mmap.ALLOCATIONGRANULARITY
    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size < end:
            raise CheckpointError(f"{path}: file ends inside tensor {entry.name!r} (truncated?)")
        mapped = mmap.mmap(handle.fileno(), end - offset, offset=offset, access=mmap.ACCESS_READ)
    try:
        values = np.frombuffer(mapped, dtype=_INT_OF_SIZE[itemsize], count=(end - first) // itemsize, offset=first - offset)
        sample = values[::stride].copy()
        del values  # a live view of the map would keep `close` from unmapping it
    finally:
        mapped.close()
    return torch.from_numpy(sample).view(entry.dtype)
