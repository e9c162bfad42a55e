"""The stream of task values the exact selections read (`select.py`, `radix_select.py`): blocks of
every `stride`-th merged scalar, tensor by tensor, and their magnitudes."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

Stream = Callable[[int], Iterable[Tensor]]
"""`stream(stride)` yields `(T, m)` blocks holding every `stride`-th scalar of every merged tensor."""
_INT_VIEW = {torch.float32: torch.int32, torch.float64: torch.int64}


def tensor_stream(tensors: Sequence[Tensor]) -> Stream:
    """A `Stream` over in-memory tensors, each `(T, ...)` (task values stacked on dim 0; empty
    tensors yield empty blocks, which count for nothing).

    Args:
        tensors: the per-tensor task values.
    """

    def stream(stride: int = 1) -> Iterable[Tensor]:
        for values in tensors:
            yield values.detach().reshape(values.shape[0], -1)[:, ::stride]

    return stream


def task_rows(values: Tensor, num_tasks: int) -> Tensor:
    """A stream block as `(T, m)`, checked for its task count."""
    if values.shape[0] != num_tasks:
        raise ValueError(f"expected {num_tasks} task rows, got shape {tuple(values.shape)}")
    return values.detach().reshape(num_tasks, -1)


def magnitudes(flat: Tensor, dtype: torch.dtype, scratch: Any = None) -> Tensor:
    """`|flat|` in `dtype`; with `scratch` (a `select._Scratch`), written into its reused buffer."""
    if scratch is None or flat.device.type != "cpu":
        return flat.abs().to(dtype).contiguous()
    out = scratch.get("magnitude", tuple(flat.shape), dtype)
    return torch.abs(flat, out=out) if flat.dtype == dtype else out.copy_(flat).abs_()


def _blocks(stream: Stream, stride: int, num_tasks: int, dtype: torch.dtype, scratch: Any = None) -> Iterable[Tensor]:
    """The stream's blocks as magnitudes in `dtype`, checked for their task count. With `scratch`,
    every block is written into the same buffer: the caller must be done with one block before
    asking for the next."""
    for values in stream(stride):
        yield magnitudes(task_rows(values, num_tasks), dtype, scratch)
