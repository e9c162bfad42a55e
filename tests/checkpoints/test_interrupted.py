"""A merge killed mid-way (SIGKILL, a real process) leaves nothing at OUT; the rerun cleans up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from neuroflow.checkpoints import merge_checkpoints
from neuroflow.atomic import clean_stale as clean_stale_temporaries
from neuroflow.atomic import make_temp_dir as make_temporary
from neuroflow.merging import TIES

SCRIPT = textwrap.dedent(
    """
    import sys, time
    from neuroflow.checkpoints import merge_checkpoints
    from neuroflow.merging import TIES

    def slow(name):
        print("WROTE", name, flush=True)
        time.sleep(0.3)

    merge_checkpoints(sys.argv[1], sys.argv[3:], TIES(), sys.argv[2], max_shard_size="20KB", progress=slow)
    """
)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_killed_merge_leaves_nothing_and_rerun_cleans(llama, tmp_path) -> None:
    out = tmp_path / "out"
    experts = [str(p) for p in llama["experts"]]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(llama["base"]), str(out), *experts],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        seen = 0
        deadline = time.monotonic() + 120
        while seen < 3 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen += line.startswith("WROTE")
        assert seen == 3, proc.stderr.read()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    stale = list(tmp_path.glob(f".out.tmp-{proc.pid}-*"))
    assert len(stale) == 1 and any(stale[0].glob("model-*.safetensors"))

    merge_checkpoints(str(llama["base"]), experts, TIES(), str(out))
    assert (out / "model.safetensors").is_file()
    assert not list(tmp_path.glob(".out.tmp-*"))


def test_a_live_merge_temporary_is_not_cleaned(tmp_path) -> None:
    out = tmp_path / "out"
    mine = make_temporary(out)  # this process is alive
    dead = tmp_path / ".out.tmp-999999999-abcd1234"
    dead.mkdir()
    unrelated = tmp_path / ".other.tmp-999999999-abcd1234"
    unrelated.mkdir()
    assert clean_stale_temporaries(out) == [dead]
    assert mine.is_dir() and unrelated.is_dir() and not dead.exists()


def test_a_failed_merge_replaces_nothing(llama, tmp_path) -> None:
    out = tmp_path / "out"
    merge_checkpoints(str(llama["base"]), [str(llama["experts"][0])], TIES(), str(out))
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(ValueError):
        merge_checkpoints(str(llama["base"]), [str(llama["experts"][0])], TIES(), str(out), dtype="int8")
    assert (out / "model.safetensors").read_bytes() == before
