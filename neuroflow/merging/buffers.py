"""Buffers of the streamed merge: recycled tensor storage and task-vector stacks built in place.

Split from `engine.py` (which orchestrates the stream): these only decide where the bytes of one
tensor's task vectors live, never what is computed with them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from neuroflow.merging import kernels
from neuroflow.merging.recycler import Recycler
from neuroflow.merging.task_vectors import TaskVectors, compute_dtype
from neuroflow.merging.validation import all_finite, check_values


class StreamTaskVectors(TaskVectors):
    """`TaskVectors` whose `stack` writes each expert's row in place: the stored tensor is cast
    into its row, then the base (cast once per tensor) is subtracted. The same float arithmetic as
    `as_task_vector` (exact upcast, one rounding in the subtraction), so values are bit-identical,
    without two temporaries per expert; buffers come from the stream's `Recycler`."""

    recycler: Recycler | None = None

    def _empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        return self.recycler.empty(shape, dtype) if self.recycler else torch.empty(shape, dtype=dtype)

    def stack(self, name: str, base: Tensor | None = None) -> Tensor:
        base = self.base[name] if base is None else base
        if self._custom_task_vector or not base.is_floating_point():
            return super().stack(name, base)
        built = self._stored_minus_base(base, lambda i: self.experts.get(i, name))
        if built is None:
            return super().stack(name, base)  # the generic path raises the precise error
        out, finite = built
        if name not in self._finite:
            if finite:
                self._finite.add(name)
            else:
                self._check(name, out)
        return out

    def stack_rows(self, name: str, start: int, stop: int, base_rows: Tensor) -> Tensor:
        """Rows `start:stop` of `stack(name)`, reading only those rows of every expert; the same
        values as slicing the whole stack. Non-finite values raise; the tensor counts as checked
        only once every block was read (`mark_checked`).

        Args:
            name: a merged tensor name (`row_blocks(name)` must hold).
            start: first row.
            stop: one past the last row.
            base_rows: `theta_0[name][start:stop]`.
        """
        built = self._stored_minus_base(base_rows, lambda i: self.experts.get_rows(i, name, start, stop))
        if built is None:
            return TaskVectors.stack(self, name)[:, start:stop].contiguous()  # raises the precise error
        out, finite = built
        if name not in self._finite and not finite and not all_finite(out):
            check_values(self.base, self.experts, name)
        return out

    def _stored_minus_base(self, base: Tensor, read: Callable[[int], Tensor]) -> tuple[Tensor, bool] | None:
        """`(read(i) - base` for every expert i, stacked, in the compute dtype (`read(i)` alone for
        stored task vectors), whether every value is known finite)`; None when a stored tensor is
        not float or not `base`'s shape. "Known finite" is the compiled difference's verdict when
        every row went through it (bfloat16 checkpoints); False means "not checked here"."""
        dtype = compute_dtype(base.dtype)
        out = self._empty((self.num_tasks, *base.shape), dtype)
        subtract = not self.experts.task_vectors
        base_c, finite = None, subtract
        for i in range(self.num_tasks):
            stored = read(i).detach()
            if not stored.is_floating_point() or tuple(stored.shape) != tuple(base.shape):
                return None
            done = kernels.difference_into(out[i], stored, base.detach()) if subtract else None
            if done is not None:
                finite = finite and done
                continue
            finite = False
            out[i].copy_(stored)
            del stored
            if subtract:
                if base_c is None:
                    base_c = self._empty(tuple(base.shape), dtype).copy_(base.detach()) if base.dtype != dtype else base.detach().cpu()
                out[i].sub_(base_c)
        return out, finite
