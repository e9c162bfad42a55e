"""The experts directory index: atomic entries, a rebuilt manifest, concurrent writers."""

import json
import multiprocessing as mp
import threading
from pathlib import Path

import pytest

from neuroflow.experts import find_expert, load_manifest, rebuild_manifest
from neuroflow.experts.manifest import atomic_write_json


def entry(name: str) -> dict:
    return {"name": name, "task": name, "base_model": "m", "base_fingerprint": "sha256:0", "family": "encoder",
            "mode": "full", "backbone": {"format": "task_vector", "path": f"{name}/task_vector.safetensors"}}


def write_expert(experts_dir: str, name: str) -> None:
    """What one fit does at its end: its own entry file, then the manifest rebuild."""
    atomic_write_json(Path(experts_dir) / name / "expert.json", entry(name))
    rebuild_manifest(experts_dir)


def _process_worker(args: tuple[str, int]) -> None:
    experts_dir, worker = args
    for i in range(5):
        write_expert(experts_dir, f"task{worker}_{i}")


def test_concurrent_processes_keep_every_entry(tmp_path):
    ctx = mp.get_context("fork")
    with ctx.Pool(4) as pool:
        pool.map(_process_worker, [(str(tmp_path), w) for w in range(4)])
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    expected = sorted(f"task{w}_{i}" for w in range(4) for i in range(5))
    assert [e["name"] for e in manifest["experts"]] == expected
    assert [e["name"] for e in load_manifest(tmp_path)] == expected
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temp files left


def test_concurrent_threads_keep_every_entry(tmp_path):
    threads = [threading.Thread(target=write_expert, args=(str(tmp_path), f"t{i}")) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    names = [e["name"] for e in json.loads((tmp_path / "manifest.json").read_text())["experts"]]
    assert names == sorted(f"t{i}" for i in range(12))


def test_entries_are_the_source_of_truth(tmp_path):
    write_expert(str(tmp_path), "sst2")
    write_expert(str(tmp_path), "trec")
    (tmp_path / "manifest.json").write_text("{}")  # a stale or clobbered aggregate
    assert [e["name"] for e in load_manifest(tmp_path)] == ["sst2", "trec"]
    assert find_expert(tmp_path, "trec")["task"] == "trec"
    with pytest.raises(KeyError, match="no expert 'cola'.*\\['sst2', 'trec'\\]"):
        find_expert(tmp_path, "cola")


def test_manifest_alone_is_read_when_there_are_no_entry_files(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"version": 1, "experts": [entry("b"), entry("a")]}))
    assert [e["name"] for e in load_manifest(tmp_path)] == ["a", "b"]


def test_malformed_entries_name_their_file(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "expert.json").write_text('{"name": "bad"}')
    with pytest.raises(ValueError, match=r"bad/expert.json: expert entry lacks \['base_model'"):
        load_manifest(tmp_path)
    (tmp_path / "bad" / "expert.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad/expert.json: cannot read"):
        load_manifest(tmp_path)


def test_missing_or_empty_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_manifest(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no experts in"):
        load_manifest(tmp_path)
