"""Where the experts come from: a small read interface, in memory or lazily from safetensors.

The merge engine only ever asks for one tensor of one expert at a time (`get(i, name)`), so experts
can live on disk and be read tensor by tensor: peak memory stays O(T x largest tensor) instead of
O(T x model). `DictExperts` wraps any mappings (plain dicts, or `SafetensorsFile`, a lazy mapping over
`safe_open`); `SafetensorsExperts` is the on-disk collection.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def as_task_vector(
    stored: Tensor, base: Tensor, dtype: torch.dtype, stored_is_task_vector: bool, out: Tensor | None = None
) -> Tensor:
    """`stored - base` (or `stored` itself for stored task vectors) in `dtype`: the one place
    task vectors are computed, so every pass over them sees bit-identical values.

    Args:
        stored: what the expert stores (weights or task vector), any float dtype (integer and bool
            tensors raise TypeError: they are never merged).
        base: the matching slice of the pre-trained weights (float too, unless unused).
        dtype: computation dtype.
        stored_is_task_vector: `stored` already is `theta_t - theta_0`.
        out: optional destination of shape `stored.shape` and dtype `dtype`.
    """
    # Integer and bool tensors are copied from the base, never merged: a float task vector of
    # them would round large ids and turn masks into numbers.
    for what, tensor in (("stored", stored), ("base", None if stored_is_task_vector else base)):
        if tensor is not None and not tensor.is_floating_point():
            raise TypeError(
                f"as_task_vector: the {what} tensor has dtype {tensor.dtype}; only floating-point "
                "tensors have task vectors (integer and bool tensors are copied from the base)"
            )
    # Merging runs on the CPU whatever device the inputs live on (results go back to the base's).
    stored = stored.detach().to(device="cpu", dtype=dtype)
    if stored_is_task_vector:
        return stored if out is None else out.copy_(stored)
    base = base.detach().to(device="cpu", dtype=dtype)
    return torch.sub(stored, base, out=out) if out is not None else stored - base


def tensor_meta(mapping: Mapping[str, Tensor], name: str) -> tuple[tuple[int, ...], torch.dtype]:
    """Shape and dtype of `mapping[name]`, from the file header when the mapping is lazy (has `meta`).

    Args:
        mapping: a state dict or a lazy mapping such as `SafetensorsFile`.
        name: the tensor name.
    """
    if hasattr(mapping, "meta"):
        return mapping.meta(name)
    tensor = mapping[name]
    return tuple(tensor.shape), tensor.dtype


def read_rows(mapping: Mapping[str, Tensor], name: str, start: int, stop: int) -> Tensor:
    """Rows `start:stop` (first dimension) of `mapping[name]`, read alone when the mapping can
    (lazy files with `read_rows`), so a large tensor can be merged a row block at a time.

    Args:
        mapping: a state dict or a lazy mapping.
        name: the tensor name.
        start: first row.
        stop: one past the last row.
    """
    if hasattr(mapping, "read_rows"):
        return mapping.read_rows(name, start, stop)
    return mapping[name][start:stop]


def read_strided(mapping: Mapping[str, Tensor], name: str, stride: int) -> Tensor | None:
    """Every `stride`-th scalar of `mapping[name]` (flattened) when the mapping reads those alone
    (lazy folders with `read_strided`), else None: a caller sampling a lazy file would otherwise
    read it whole.

    Args:
        mapping: a state dict or a lazy mapping.
        name: the tensor name.
        stride: distance between sampled scalars.
    """
    if hasattr(mapping, "read_strided"):
        return mapping.read_strided(name, stride)
    return None


class ExpertSource(ABC):
    """Read access to T experts, one tensor at a time.

    `get(i, name)` returns what expert `i` stores under `name`: its fine-tuned weights
    (`theta_i`), or its task vector (`theta_i - theta_0`) when `task_vectors` is True. Subclasses
    implement `__len__`, `keys` and `get` (and `meta`/`describe` to be cheaper or clearer). A
    subclass may also override `task_vector` (e.g. to convert stored formats); the engine then takes
    every task vector from it.
    """

    task_vectors: bool = False

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def keys(self, i: int) -> list[str]:
        """Tensor names stored by expert `i`."""

    @abstractmethod
    def get(self, i: int, name: str) -> Tensor:
        """Tensor `name` of expert `i` (raises KeyError when absent)."""

    def get_rows(self, i: int, name: str, start: int, stop: int) -> Tensor:
        """Rows `start:stop` of `get(i, name)`; override to read only those rows."""
        return self.get(i, name)[start:stop]

    def get_strided(self, i: int, name: str, stride: int) -> Tensor | None:
        """Every `stride`-th scalar of `get(i, name)` flattened, read alone; None (the default)
        when this source cannot read a sample without reading the whole tensor.

        Args:
            i: expert index.
            name: tensor name.
            stride: distance between sampled scalars.
        """
        return None

    def meta(self, i: int, name: str) -> tuple[tuple[int, ...], torch.dtype]:
        """Shape and dtype of tensor `name` of expert `i`; override to avoid reading the data."""
        tensor = self.get(i, name)
        return tuple(tensor.shape), tensor.dtype

    def describe(self, i: int) -> str:
        """How errors name expert `i`."""
        return f"expert {i}"

    def statistics(self, i: int, kind: str) -> Mapping[str, Tensor] | None:
        """Statistics of expert `i`'s training data that data-aware merges read, keyed by tensor
        name (kind "regmean": the Gram matrix `X^T X` of a linear weight's inputs, shape
        `(fan_in, fan_in)`; kind "fisher": the diagonal Fisher, the tensor's shape); None when this
        source has none of that kind. The mapping may be lazy (read one tensor at a time).

        Args:
            i: expert index.
            kind: the statistic (`MergeMethod.statistics_kind`).
        """
        return None

    def task_vector(self, i: int, name: str, base: Tensor, dtype: torch.dtype, out: Tensor | None = None) -> Tensor:
        """`theta_i - theta_0` for tensor `name`, computed in `dtype`.

        Args:
            i: expert index.
            name: tensor name.
            base: the pre-trained tensor `theta_0[name]`.
            dtype: computation dtype (float32 or float64).
            out: optional destination tensor.
        """
        return as_task_vector(self.get(i, name), base, dtype, self.task_vectors, out=out)


class SafetensorsFile(Mapping[str, Tensor]):
    """A read-only mapping over a safetensors file that reads each tensor only when indexed.

    Args:
        path: the `.safetensors` file.
    """

    def __init__(self, path: str | Path) -> None:
        from safetensors import safe_open

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"safetensors file not found: {self.path}")
        self._file = safe_open(str(self.path), framework="pt")
        self._keys = list(self._file.keys())

    def __getitem__(self, name: str) -> Tensor:
        if name not in self._keys:
            raise KeyError(name)
        return self._file.get_tensor(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, name: object) -> bool:
        return name in self._keys

    def read_rows(self, name: str, start: int, stop: int) -> Tensor:
        """Rows `start:stop` of tensor `name`, reading only those."""
        if name not in self._keys:
            raise KeyError(name)
        return self._file.get_slice(name)[start:stop]

    def meta(self, name: str) -> tuple[tuple[int, ...], torch.dtype]:
        """Shape and dtype from the file header, without reading the tensor."""
        view = self._file.get_slice(name)
        code = view.get_dtype()
        if code not in SAFETENSORS_DTYPES:
            raise ValueError(f"{self.path}: tensor {name!r} has unsupported dtype {code}")
        return tuple(view.get_shape()), SAFETENSORS_DTYPES[code]


class DictExperts(ExpertSource):
    """Experts held as mappings name -> tensor (dicts, or lazy `SafetensorsFile`s).

    Args:
        experts: one mapping per expert.
        task_vectors: the mappings hold task vectors instead of fine-tuned weights.
        names: how errors name each expert (e.g. its task or file); default "expert <i>".
        statistics: per expert, kind -> {tensor name: statistic} (see `ExpertSource.statistics`),
            for data-aware merges of in-memory experts.
    """

    def __init__(
        self,
        experts: Sequence[Mapping[str, Tensor]],
        task_vectors: bool = False,
        names: Sequence[str] | None = None,
        statistics: Sequence[Mapping[str, Mapping[str, Tensor]]] | None = None,
    ) -> None:
        self.experts = list(experts)
        self.task_vectors = task_vectors
        if names is not None and len(names) != len(self.experts):
            raise ValueError(f"got {len(names)} expert names for {len(self.experts)} experts")
        self.names = list(names) if names is not None else None
        if statistics is not None and len(statistics) != len(self.experts):
            raise ValueError(f"got statistics for {len(statistics)} experts, expected {len(self.experts)}")
        self._statistics = list(statistics) if statistics is not None else None

    def __len__(self) -> int:
        return len(self.experts)

    def keys(self, i: int) -> list[str]:
        return list(self.experts[i].keys())

    def get(self, i: int, name: str) -> Tensor:
        return self.experts[i][name]

    def get_rows(self, i: int, name: str, start: int, stop: int) -> Tensor:
        return read_rows(self.experts[i], name, start, stop)

    def meta(self, i: int, name: str) -> tuple[tuple[int, ...], torch.dtype]:
        expert = self.experts[i]
        if isinstance(expert, SafetensorsFile):
            return expert.meta(name)
        return super().meta(i, name)

    def describe(self, i: int) -> str:
        return f"expert {i}" + (f" ({self.names[i]})" if self.names else "")

    def statistics(self, i: int, kind: str) -> Mapping[str, Tensor] | None:
        return None if self._statistics is None else self._statistics[i].get(kind)


class SafetensorsExperts(DictExperts):
    """Experts stored one safetensors file each, read lazily tensor by tensor.

    Args:
        paths: one `.safetensors` file per expert (fine-tuned weights, or task vectors).
        task_vectors: the files hold task vectors (`theta_t - theta_0`) instead of weights.
    """

    def __init__(self, paths: Sequence[str | Path], task_vectors: bool = False) -> None:
        files = [SafetensorsFile(p) for p in paths]
        super().__init__(files, task_vectors=task_vectors, names=[str(p) for p in paths])
