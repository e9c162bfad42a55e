"""The allocator thresholds a streamed merge sets (glibc only)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from neuroflow.checkpoints import allocator


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_thresholds_are_set_in_a_fresh_process_and_a_users_choice_is_kept() -> None:
    code = "from neuroflow.checkpoints.allocator import bound_allocator; print(bound_allocator(), bound_allocator())"
    env_free = {k: v for k, v in __import__("os").environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env_free, check=True).stdout
    assert out.split() == ["True", "True"]
    mine = {**env_free, "MALLOC_MMAP_THRESHOLD_": "1048576"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=mine, check=True).stdout
    assert out.split() == ["False", "False"]
    assert allocator.MMAP_THRESHOLD == 4 << 20
