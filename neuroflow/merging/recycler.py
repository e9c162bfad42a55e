"""A pool of CPU buffers handed out as tensors and taken back when nothing references them.

The streamed merge allocates the same few sizes over and over (every layer repeats its shapes): a
fresh multi-megabyte buffer is page-faulted in on first touch, which costs about as much as the
arithmetic or the copy done in it (measured at 210M: 0.9M minor faults, 3-5 s of system time, for
a task-arithmetic merge whose maths take 2 s). Read buffers, task-vector stacks, base copies and
merged outputs all come from pools like this one.
"""

from __future__ import annotations

import math
import threading
import weakref

import numpy as np
import torch
from torch import Tensor


class Recycler:
    """Buffers reused for the next tensor that fits once nothing uses them. At most `cap` bytes are
    kept free; the buffers freed longest ago go first.

    A free buffer serves any request of up to its size and at least `1 / SLACK` of it (the
    smallest such buffer first), whatever the dtype: a layer's tensors come in a few shapes (a
    LLaMA layer's attention and MLP matrices differ by 2.75x), and an exact-size pool with a cap
    evicts one shape's buffers to keep the other's, so every change of shape page-faulted fresh
    buffers in (at 210M, 75% of a task-arithmetic merge's page faults).

    Each buffer is a numpy array; a tensor is handed out on a fresh array object viewing it, which
    the tensor's storage keeps alive. That object dies only with the storage, i.e. when the tensor
    and every view of it are gone, so nothing (a method keeping a reference, a consumer holding a
    merged tensor, a flattened view outliving its tensor) can observe a buffer's reuse.

    Args:
        cap: bytes of free buffers kept at most.
    """

    SLACK = 4

    def __init__(self, cap: int) -> None:
        self.cap, self._bytes = cap, 0
        self._free: list[np.ndarray] = []  # uint8 buffers, oldest first
        self._lock = threading.Lock()
        self.reused = 0  # buffers handed out again (for tests and benchmarks)

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        """An uninitialised CPU tensor of `shape` and `dtype`, on a recycled buffer when one fits."""
        numel = math.prod(shape)
        if numel == 0:
            return torch.empty(shape, dtype=dtype)
        need = numel * dtype.itemsize
        raw = None
        with self._lock:
            best = None
            for i in range(len(self._free) - 1, -1, -1):
                size = self._free[i].nbytes
                if need <= size <= need * self.SLACK and (best is None or size < self._free[best].nbytes):
                    best = i
            if best is not None:
                raw = self._free.pop(best)
                self._bytes -= raw.nbytes
                self.reused += 1
        if raw is None:
            # From torch's allocator (64-byte aligned; numpy's malloc gives 16, which slows the
            # vectorised loops), seen as the numpy array the pool keeps.
            raw = torch.empty(need, dtype=torch.uint8).numpy()
        handed = raw[:need]  # a prefix keeps the buffer's alignment
        weakref.finalize(handed, self._give, raw)
        return torch.from_numpy(handed).view(dtype).reshape(shape)

    def _give(self, raw: np.ndarray) -> None:
        if raw.nbytes > self.cap:
            return
        with self._lock:
            self._free.append(raw)
            self._bytes += raw.nbytes
            # Shapes change along the model (embedding blocks, then layers, then the head): the
            # buffers freed longest ago are the least likely to be asked for next.
            while self._bytes > self.cap:
                self._bytes -= self._free.pop(0).nbytes
