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
    """Buffers reused for the next tensor of the same size and dtype once nothing uses them. At most
    `cap` bytes are kept free; the buffers freed longest ago go first.

    Each buffer is a numpy array; a tensor is handed out on a fresh array object viewing it, which
    the tensor's storage keeps alive. That object dies only with the storage, i.e. when the tensor
    and every view of it are gone, so nothing (a method keeping a reference, a consumer holding a
    merged tensor, a flattened view outliving its tensor) can observe a buffer's reuse.

    Args:
        cap: bytes of free buffers kept at most.
    """

    def __init__(self, cap: int) -> None:
        self.cap, self._bytes = cap, 0
        self._free: list[tuple[int, torch.dtype, np.ndarray]] = []  # oldest first
        self._lock = threading.Lock()
        self.reused = 0  # buffers handed out again (for tests and benchmarks)

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        """An uninitialised CPU tensor of `shape` and `dtype`, on a recycled buffer when one is free."""
        numel = math.prod(shape)
        if numel == 0:
            return torch.empty(shape, dtype=dtype)
        raw = None
        with self._lock:
            for i in range(len(self._free) - 1, -1, -1):
                if self._free[i][:2] == (numel, dtype):
                    raw = self._free.pop(i)[2]
                    self._bytes -= raw.nbytes
                    self.reused += 1
                    break
        if raw is None:
            # From torch's allocator (64-byte aligned; numpy's malloc gives 16, which slows the
            # vectorised loops), seen as the numpy array the pool keeps.
            raw = torch.empty(numel * dtype.itemsize, dtype=torch.uint8).numpy()
        handed = raw[:]
        weakref.finalize(handed, self._give, numel, dtype, raw)
        return torch.from_numpy(handed).view(dtype).reshape(shape)

    def _give(self, numel: int, dtype: torch.dtype, raw: np.ndarray) -> None:
        if raw.nbytes > self.cap:
            return
        with self._lock:
            self._free.append((numel, dtype, raw))
            self._bytes += raw.nbytes
            # Shapes change along the model (embedding blocks, then layers, then the head): the
            # buffers freed longest ago are the least likely to be asked for next.
            while self._bytes > self.cap:
                self._bytes -= self._free.pop(0)[2].nbytes
