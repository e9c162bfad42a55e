"""glibc's malloc held to fixed thresholds while a streamed merge runs.

A streamed merge allocates and frees buffers of a few to a few tens of megabytes thousands of
times (row blocks, task-vector stacks, casts), on several threads. glibc serves each one above its
mmap threshold with a fresh `mmap` and returns it with `munmap` when freed, and it raises that
threshold only as it sees larger chunks freed, per process, in an order set by thread timing. So
from run to run the same merge faulted 0.28 M to 3.0 M pages in (1.26B TIES, base + 3 experts,
2 cores: 4 to 14 system CPU seconds, wall 15 to 23 s). With the threshold fixed at glibc's maximum
(32 MiB) and freed memory kept up to 256 MiB before it is trimmed, every run faulted 0.28 M
pages, took 13.5-14.9 s, and peaked at the same RSS (0.91 GiB) (measured side by side, 2026-12-07).

`steady_heap()` sets them for the process (once; glibc has no way to read them back). It leaves
the process alone where the user set glibc's own variables (`MALLOC_MMAP_THRESHOLD_`,
`MALLOC_TRIM_THRESHOLD_`, `GLIBC_TUNABLES`), where `NEUROFLOW_MALLOC_TUNING=0`, and off glibc.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger(__name__)

# mallopt's parameter numbers (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# glibc refuses larger mmap thresholds (HEAP_MAX_SIZE / 2 on 64-bit builds).
MMAP_THRESHOLD_BYTES = 32 << 20
TRIM_THRESHOLD_BYTES = 256 << 20
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")

_applied: bool | None = None


def steady_heap() -> bool:
    """Fix glibc's mmap threshold (32 MiB) and trim threshold (256 MiB) for this process, once.

    Returns:
        whether the thresholds are (now) set by neuroflow.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("NEUROFLOW_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    if any(os.environ.get(name) for name in _USER_SETTINGS):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 (glibc only: musl's mallopt does nothing)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    log.debug("glibc malloc thresholds fixed for the merge: %s", _applied)
    return _applied
