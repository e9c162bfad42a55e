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
