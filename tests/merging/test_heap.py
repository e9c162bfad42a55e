"""`steady_heap`: allocations of growing sizes stop faulting fresh pages in."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Buffers of 8 MiB growing by 512 KiB: each new size is above glibc's dynamic mmap threshold, so
# by default each one is a fresh mmap whose pages are faulted in and unmapped when freed.
CHILD = textwrap.dedent("""
    import resource, torch
    from neuroflow.merging.heap import steady_heap
    applied = steady_heap()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for k in range(40):
        x = torch.empty((8 << 20) + k * (512 << 10), dtype=torch.uint8)
        x.fill_(1)
        del x
    print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def faults(**env: str) -> tuple[bool, int]:
    clean = {k: v for k, v in os.environ.items() if k not in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")}
    out = subprocess.run([sys.executable, "-c", CHILD], env={**clean, "PYTHONPATH": str(REPO), **env},
                         capture_output=True, text=True, check=True).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_fixed_thresholds_fault_far_fewer_pages() -> None:
    applied, tuned = faults()
    if not applied:
        pytest.skip("not glibc")
    off_applied, default = faults(NEUROFLOW_MALLOC_TUNING="0")
    assert not off_applied
    # 40 buffers of 8-28 MiB: about 180k faults by default, about 7k (the largest buffer) tuned.
    assert tuned * 5 < default


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_the_users_own_malloc_settings_are_left_alone() -> None:
    applied, _ = faults(MALLOC_TRIM_THRESHOLD_="1000000")
    assert not applied
