"""Keep the C allocator from holding freed tensor memory during a streamed merge.

glibc raises its mmap threshold each time a large mmapped block is freed (up to 32 MiB), so the
merge's many multi-megabyte temporaries then come from the heap, whose freed pages are rarely
returned: measured at 1.26B parameters with 2 threads, the peak RSS of a NeuroMerging merge went
from 4.7 GiB with a fixed threshold to 17.7 GiB with glibc's default (`benchmarks/merge_checkpoints.py`,
with `MALLOC_MMAP_THRESHOLD_` set). Fixing the threshold keeps blocks of 4 MiB and more mmapped, so
each is returned to the system when torch frees it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 4 << 20
TRIM_THRESHOLD = 32 << 20
_done = False


def bound_allocator() -> bool:
    """Fix glibc's mmap and trim thresholds for this process (once); False where not glibc, or
    where the user already chose them through `MALLOC_MMAP_THRESHOLD_` / `MALLOC_TRIM_THRESHOLD_`."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if not _done:
        log.debug("mallopt refused the thresholds; the allocator keeps its defaults")
    return _done
