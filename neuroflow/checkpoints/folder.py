"""A Hugging Face model folder as a lazy mapping: tensor names from the headers, data on demand.

Reads what `save_pretrained` writes: `model.safetensors`, or shards listed in
`model.safetensors.index.json`; `pytorch_model.bin` (or its index) only through
`torch.load(weights_only=True)`. Opening a folder reads `config.json`, the index and every shard's
header, so a missing shard or a corrupt header fails here, before any tensor is read.
"""

from __future__ import annotations

import json
import math
import os
import pickle
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from neuroflow.checkpoints.errors import CheckpointError
from neuroflow.checkpoints.safetensors_io import TensorEntry, read_header, read_strided, read_tensor

SAFETENSORS, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
BIN, BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"


def has_weights(path: str | os.PathLike) -> bool:
    """Whether `path` holds Hugging Face model weights (any of the four layouts)."""
    path = Path(path)
    return any((path / name).is_file() for name in (SAFETENSORS, SAFETENSORS_INDEX, BIN, BIN_INDEX))


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`, errors naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot read JSON ({err})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def _index_files(index_path: Path) -> dict[str, Path]:
    weight_map = read_json(index_path).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index_path}: no weight_map")
    return {name: index_path.parent / file for name, file in weight_map.items()}


class _BinFile:
    """One `pytorch_model*.bin`, loaded with `weights_only=True` (memory-mapped when possible)."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise CheckpointError(f"{path}: weights file not found")
        try:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as err:
                if "mmap" not in str(err):
                    raise
                state = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
        except pickle.UnpicklingError as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CheckpointError(
                f"{path}: refused: loading it needs unpickling arbitrary Python objects, which can run code "
                f"(torch.load(weights_only=True) said: {first}); convert it to safetensors"
            ) from None
        except (RuntimeError, OSError, EOFError, ValueError) as err:
            raise CheckpointError(f"{path}: cannot read PyTorch weights ({err})") from None
        if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
            raise CheckpointError(f"{path}: not a state dict of tensors")
        self.path, self.state = path, state


class CheckpointFolder(Mapping[str, Tensor]):
    """Read-only lazy mapping over a model folder's weights, with its `config.json`.

    Args:
        path: the folder.
        mmap: read safetensors tensors through a per-access `safe_open` window instead of plain
            reads into fresh buffers (both keep RSS bounded: nothing stays mapped between reads).

    Attributes:
        path: the folder.
        config: `config.json` (empty when absent).
        files: the weight files, in order.
    """

    def __init__(self, path: str | os.PathLike, mmap: bool = False) -> None:
        self.path = Path(path)
        self.mmap = mmap
        if not self.path.is_dir():
            raise CheckpointError(f"{self.path}: model folder not found")
        config_path = self.path / "config.json"
        self.config = read_json(config_path) if config_path.is_file() else {}
        self._entries: dict[str, tuple[Path, TensorEntry]] = {}
        self._bins: dict[str, _BinFile] = {}
        if (self.path / SAFETENSORS_INDEX).is_file() or (self.path / SAFETENSORS).is_file():
            self._open_safetensors()
        elif (self.path / BIN_INDEX).is_file() or (self.path / BIN).is_file():
            self._open_bins()
        else:
            raise CheckpointError(f"{self.path}: no model weights ({SAFETENSORS}, {SAFETENSORS_INDEX}, {BIN} or {BIN_INDEX})")

    def _open_safetensors(self) -> None:
        index = self.path / SAFETENSORS_INDEX
        listed = _index_files(index) if index.is_file() else None
        files = list(dict.fromkeys(listed.values())) if listed else [self.path / SAFETENSORS]
        for file in files:
            if not file.is_file():
                raise CheckpointError(f"{file}: shard listed in {index.name} is missing")
        for file in files:
            for name, entry in read_header(file).entries.items():
                self._entries[name] = (file, entry)
        if listed:
            for name, file in listed.items():
                if name not in self._entries or self._entries[name][0] != file:
                    raise CheckpointError(f"{file}: has no tensor {name!r} although {index.name} lists it there")
        self.files = files

    def _open_bins(self) -> None:
        index = self.path / BIN_INDEX
        listed = _index_files(index) if index.is_file() else None
        files = list(dict.fromkeys(listed.values())) if listed else [self.path / BIN]
        for file in files:
            loaded = _BinFile(file)
            for name in loaded.state:
                self._bins[name] = loaded
        self.files = files

    def __getitem__(self, name: str) -> Tensor:
        if name in self._entries:
            file, entry = self._entries[name]
            if self.mmap:
                from safetensors import safe_open

                with safe_open(str(file), framework="pt") as handle:
                    return handle.get_tensor(name)
            return read_tensor(file, entry)
        if name in self._bins:
            return self._bins[name].state[name].clone()  # a private copy, not the mapped pages
        raise KeyError(name)

    def read_rows(self, name: str, start: int, stop: int) -> Tensor:
        """Rows `start:stop` of tensor `name`'s first dimension, reading only those bytes.

        Args:
            name: the tensor name.
            start: first row.
            stop: one past the last row.
        """
        if name in self._entries and not self.mmap:
            file, entry = self._entries[name]
            return read_tensor(file, entry, rows=(start, stop))
        if name in self._bins:
            return self._bins[name].state[name][start:stop].clone()
        return self[name][start:stop]

    def read_strided(self, name: str, stride: int, numel: int | None = None) -> Tensor:
        """Every `stride`-th scalar of tensor `name` (flattened), reading only those from a
        safetensors file.

        Args:
            name: the tensor name.
            stride: distance between sampled scalars.
            numel: sample among the first `numel` scalars only (None: all).
        """
        if name in self._entries:
            file, entry = self._entries[name]
            return read_strided(file, entry, stride, numel)
        return self[name].reshape(-1)[:numel][::stride].clone()

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries or self._bins)

    def __len__(self) -> int:
        return len(self._entries or self._bins)

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._bins

    def meta(self, name: str) -> tuple[tuple[int, ...], torch.dtype]:
        """Shape and dtype, from the header (no tensor read)."""
        if name in self._entries:
            entry = self._entries[name][1]
            return entry.shape, entry.dtype
        tensor = self._bins[name].state[name]
        return tuple(tensor.shape), tensor.dtype

    def file_of(self, name: str) -> Path:
        """The weight file holding tensor `name`."""
        return self._entries[name][0] if name in self._entries else self._bins[name].path

    def nbytes(self) -> int:
        """Bytes of tensor data in the folder."""
        return sum(math.prod(self.meta(n)[0]) * self.meta(n)[1].itemsize for n in self)

    def __repr__(self) -> str:
        return f"CheckpointFolder({str(self.path)!r}, {len(self)} tensors)"


