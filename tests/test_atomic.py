"""neuroflow.atomic: nothing half-written is ever visible, and a failed write keeps the old file."""

import json
import os

import pytest

from neuroflow.atomic import atomic_write, atomic_write_json, atomic_write_text, replace_dir


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "report.json"
    atomic_write_json(target, {"a": 1})

    def broken(path):
        path.write_text('{"a": 2, "trunc')
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, broken)
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_text_is_written_with_shareable_permissions(tmp_path):
    target = tmp_path / "sub" / "card.md"
    atomic_write_text(target, "héllo\n")
    assert target.read_text(encoding="utf-8") == "héllo\n"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_replace_dir_swaps_in_the_new_folder_and_removes_the_old(tmp_path):
    final, tmp = tmp_path / "expert", tmp_path / ".expert.tmp"
    final.mkdir()
    (final / "old.txt").write_text("old")
    tmp.mkdir()
    (tmp / "new.txt").write_text("new")
    replace_dir(tmp, final)
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["expert"]


# -- real processes: concurrent writers, kills inside a swap, stale temporaries (issue 13, item 10)

import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import neuroflow.atomic as atomic  # noqa: E402

WORKER = Path(__file__).with_name("atomic_workers.py")
ROOT = Path(__file__).resolve().parents[1]


def _worker(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen([sys.executable, str(WORKER), *map(str, args)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def _version(final: Path, token: str) -> None:
    final.mkdir()
    (final / "a.txt").write_text(token)
    (final / "b.txt").write_text(token)


def _leftovers(parent: Path, final: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name != final.name and not p.name.endswith(".lock"))


def test_concurrent_writers_never_leave_the_folder_missing_for_readers(tmp_path):
    final = tmp_path / "expert"
    _version(final, "first")
    stop = tmp_path / "stop"
    reader = _worker("reader", final, stop)
    writers = [_worker("writer", final, 150, tag) for tag in ("w1", "w2")]
    for proc in writers:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
    stop.touch()
    out, err = reader.communicate(timeout=60)
    assert reader.returncode == 0, err[-2000:]
    checks, missing, torn = map(int, out.split())
    assert checks > 100, "the reader did not run alongside the writers"
    assert (missing, torn) == (0, 0), f"{missing} of {checks} reads found {final} missing, {torn} torn"
    token = (final / "a.txt").read_text()
    assert token in ("w1-149", "w2-149") and (final / "b.txt").read_text() == token
    assert _leftovers(tmp_path, final) == ["stop"]


@pytest.mark.parametrize("mode", ["exchange", "fallback"])
def test_a_writer_killed_inside_the_swap_never_loses_the_folder(tmp_path, mode):
    if mode == "exchange":
        probe_a, probe_b = tmp_path / "pa", tmp_path / "pb"
        probe_a.mkdir(), probe_b.mkdir()
        try:
            atomic._exchange(probe_a, probe_b)
        except atomic._ExchangeUnsupported:
            pytest.skip("no renameat2(RENAME_EXCHANGE) here")
        probe_a.rmdir(), probe_b.rmdir()
    final = tmp_path / "merged"
    _version(final, "old")
    proc = _worker("crash", final, mode)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, f"rc {proc.returncode}: {out} {err[-2000:]}"
    if mode == "exchange":
        # One atomic step: the killed writer's folder is in place, the old one sits in its temporary.
        assert (final / "a.txt").read_text() == (final / "b.txt").read_text() == "new"
    # The next writer (or reader) repairs: the folder is back, complete, and nothing is left over.
    removed = atomic.clean_stale(final)
    assert removed, "the killed writer's temporaries were not found"
    token = (final / "a.txt").read_text()
    assert token in ("old", "new") and (final / "b.txt").read_text() == token
    assert _leftovers(tmp_path, final) == []


def test_stale_temporaries_of_killed_writers_are_removed_and_live_ones_kept(tmp_path):
    final = tmp_path / "neuromerging"
    killed, alive = _worker("hold", final), _worker("hold", final)
    try:
        killed_tmp, alive_tmp = Path(killed.stdout.readline().strip()), Path(alive.stdout.readline().strip())
        assert killed_tmp.is_dir() and alive_tmp.is_dir()
        assert str(killed.pid) in killed_tmp.name  # named after its writer
        killed.kill()
        killed.wait(timeout=30)
        other_host = tmp_path / f".{final.name}.tmp-{killed.pid}-00000000.abcdef12"
        other_host.mkdir()  # a dead pid of another machine on a shared file system: not ours to judge
        mine = atomic.make_temp_dir(final)  # the next run of the same output cleans up first
        names = _leftovers(tmp_path, final)
        assert killed_tmp.name not in names
        assert {alive_tmp.name, other_host.name, mine.name} == set(names)
    finally:
        alive.kill()
        alive.wait(timeout=30)
        killed.stdout.close(), alive.stdout.close(), killed.stderr.close(), alive.stderr.close()
    assert alive_tmp in atomic.clean_stale(final)
    assert not alive_tmp.exists() and other_host.exists()


# -- permissions (issue 13, item 11)

@pytest.fixture
def group_umask():
    old = os.umask(0o002)
    yield 0o002
    os.umask(old)


def test_files_written_by_safetensors_get_the_umask_modes(tmp_path, group_umask):
    target = tmp_path / "heads.safetensors"
    atomic_write(target, lambda p: save_file({"w": torch.zeros(2)}, str(p)))
    assert target.stat().st_mode & 0o777 == 0o664


def test_replace_dir_gives_the_new_folder_the_umask_modes(tmp_path, group_umask):
    tmp, final = atomic.make_temp_dir(tmp_path / "out"), tmp_path / "out"
    (tmp / "sub").mkdir(mode=0o700)
    save_file({"w": torch.zeros(2)}, str(tmp / "sub" / "model.safetensors"))
    (tmp / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(tmp / "run.sh", 0o700)
    replace_dir(tmp, final)
    assert final.stat().st_mode & 0o777 == 0o775
    assert (final / "sub").stat().st_mode & 0o777 == 0o775
    assert (final / "sub" / "model.safetensors").stat().st_mode & 0o777 == 0o664
    assert (final / "run.sh").stat().st_mode & 0o777 == 0o775
