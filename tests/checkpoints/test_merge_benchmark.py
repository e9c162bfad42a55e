"""`benchmarks/merge_checkpoints.py` runs end to end on the tiny shape and prints its table."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_tiny_benchmark_prints_every_requested_row(tmp_path: Path) -> None:
    runs = "floor,nf_nm,nf_nm_t2,nf_nm_c1"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "merge_checkpoints.py"), "--size", "tiny", "--experts", "2",
         "--root", str(tmp_path), "--runs", runs],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {m.group(1): float(m.group(2)) for m in re.finditer(r"^\| (\w+) \| ([\d.]+) \|", result.stdout, re.M)}
    expected = runs.split(",") if shutil.which("taskset") else runs.split(",")[:3]  # `_c1` needs taskset
    assert set(rows) == set(expected)
    assert all(cpu > 0 for cpu in rows.values())
    assert re.search(r"nm: 2 threads [\d.]+x faster wall than 1", result.stdout)
    assert not (tmp_path / "out").exists()  # the last run's output is cleaned up


def test_thread_scaling_prints_each_kind_of_work(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "merge_checkpoints.py"), "--build-only", "--size", "tiny",
                    "--experts", "1", "--root", str(tmp_path)], check=True, timeout=300, env=env)
    folders = [tmp_path / "tiny" / "base", tmp_path / "tiny" / "expert0"]
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "thread_scaling.py"), "--repeats", "1",
                             "--folders", *map(str, folders)], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = re.findall(r"^\| (in-cache|streaming|page-cache)[^|]*\| ([\d.]+) \| ([\d.]+) \| ([\d.]+)x \|$", result.stdout, re.M)
    assert [row[0] for row in rows] == ["in-cache", "streaming", "page-cache"]
    assert all(float(value) > 0 for row in rows for value in row[1:])
