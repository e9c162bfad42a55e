"""A file written front to back through a small aligned window, with `O_DIRECT` where it works.

A merge writes gigabytes once and never reads them back in the same process. Through the page
cache every written page is first allocated, then copied into, then written back and fsynced: at
1.26B parameters (2.5 GB of bf16 shards, 2 cores, ext4 on a virtual disk) those copies cost 2-6.7
CPU seconds and the fsync 0.7 s more, against 0.3 CPU seconds and no fsync wait for the same bytes
staged in an 8 MiB window and written with `O_DIRECT` (measured side by side, 2026-12-07). The
window is the only buffer: bytes are copied into it as they arrive in file order, and each full
window goes to disk in one aligned write.

Writes that do not arrive in order are still exact: a rewrite of bytes still in the window
patches it, a rewrite of bytes already on disk goes through a second, buffered descriptor (the
kernel keeps the two coherent), and a write that skips ahead turns the file into a plain buffered
file from then on. Where `O_DIRECT` is missing (macOS) or refused (some filesystems: `EINVAL`),
every write is buffered, as before.
"""

from __future__ import annotations

import errno
import mmap
import os

# O_DIRECT needs file offsets, lengths and memory aligned to the device's logical block (512 or
# 4096 bytes); 4096 satisfies both, and a page-aligned window satisfies the memory rule.
_ALIGN = 4096
WINDOW_BYTES = 8 << 20


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    done = 0
    while done < len(data):
        done += os.pwrite(fd, data[done:], offset + done)


class StagedFile:
    """A file of a known size written mostly in order.

    Args:
        path: the file (created or truncated; its mode is 0o666 less the umask).
        size: its final size in bytes (it is truncated to this at close).
        direct: write through `O_DIRECT` when the platform and filesystem allow it.
        window: bytes staged per direct write (a multiple of 4096).

    Attributes:
        direct: whether the file is still being written through `O_DIRECT`.
    """

    def __init__(self, path: str | os.PathLike, size: int, direct: bool = True, window: int = WINDOW_BYTES) -> None:
        if window <= 0 or window % _ALIGN:
            raise ValueError(f"window must be a positive multiple of {_ALIGN}, got {window}")
        self.path, self.size, self._window = os.fspath(path), size, window
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        os.ftruncate(self._fd, size)
        self._direct_fd: int | None = None
        if direct and hasattr(os, "O_DIRECT"):
            try:
                self._direct_fd = os.open(self.path, os.O_WRONLY | os.O_DIRECT)
            except OSError:
                self._direct_fd = None
        self._stage: mmap.mmap | None = None
        self._start = 0  # file offset of the window's first byte
        self._cursor = 0  # bytes [0, cursor) have arrived in order
        if self._direct_fd is not None:
            self._stage = mmap.mmap(-1, window)  # anonymous maps are page-aligned

    @property
    def direct(self) -> bool:
        return self._direct_fd is not None

    def pwrite(self, data: memoryview | bytes, offset: int) -> None:
        """Write `data` at `offset` (any offset; in file order is the fast path).

        Args:
            data: the bytes.
            offset: where they go in the file.
        """
        data = memoryview(data).cast("B")
        if not len(data):
            return
        if self._direct_fd is None:
            _pwrite_all(self._fd, data, offset)
            return
        end = offset + len(data)
        if offset > self._cursor:  # skips ahead: no longer front to back
            self._to_buffered()
            _pwrite_all(self._fd, data, offset)
            return
        if offset < self._cursor:  # rewrites bytes already received
            below = min(end, self._start)
            if offset < below:  # already on disk
                _pwrite_all(self._fd, data[: below - offset], offset)
            low, high = max(offset, self._start), min(end, self._cursor)
            if low < high:  # still in the window
                self._stage[low - self._start : high - self._start] = data[low - offset : high - offset]
            if end <= self._cursor:
                return
            data, offset = data[self._cursor - offset :], self._cursor
        taken = 0
        while taken < len(data):
            fill = self._cursor - self._start
            step = min(self._window - fill, len(data) - taken)
            self._stage[fill : fill + step] = data[taken : taken + step]
            taken += step
            self._cursor += step
            if self._cursor - self._start == self._window:
                self._flush(self._window)
                if self._direct_fd is None:  # the filesystem refused the direct write
                    _pwrite_all(self._fd, data[taken:], self._cursor)
                    return
                self._start = self._cursor

    def _flush(self, length: int) -> None:
        """Write the window's first `length` bytes (a multiple of the alignment) at its offset."""
        refused = False
        with memoryview(self._stage) as view:
            try:
                _pwrite_all(self._direct_fd, view[:length], self._start)
            except OSError as err:
                if err.errno != errno.EINVAL:
                    raise
                refused = True
        if refused:  # the filesystem takes O_DIRECT opens but not these writes: finish buffered
            self._to_buffered()

    def _to_buffered(self) -> None:
        """Hand the window's bytes to the buffered descriptor and stop writing directly."""
        if self._direct_fd is None:
            return
        fill = self._cursor - self._start
        if fill:
            with memoryview(self._stage) as view:
                _pwrite_all(self._fd, view[:fill], self._start)
        self._drop_direct()

    def _drop_direct(self) -> None:
        """Close the direct descriptor and free the window."""
        if self._direct_fd is not None:
            os.close(self._direct_fd)
            self._direct_fd = None
            self._stage.close()
            self._stage = None

    def close(self) -> None:
        """Write what is staged, set the final size, fsync and close."""
        if self._direct_fd is not None:
            fill = self._cursor - self._start
            if fill:
                padded = -(-fill // _ALIGN) * _ALIGN  # past the end: cut off by the truncate below
                self._stage[fill:padded] = bytes(padded - fill)
                self._flush(padded)
            self._drop_direct()
            os.ftruncate(self._fd, self.size)
        os.fsync(self._fd)
        os.close(self._fd)

    def abort(self) -> None:
        """Close without writing what is staged (the caller removes the file)."""
        self._drop_direct()
        os.close(self._fd)
