"""Hub ids: small files and headers first, checks, then the weights (huggingface_hub mocked; no network)."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from neuroflow.checkpoints import CheckpointError, classify, merge_checkpoints
from neuroflow.checkpoints.safetensors_io import CODES, read_header
from neuroflow.merging import TaskArithmetic, merge_state_dicts

from .conftest import folder_state


class FakeHub:
    """`snapshot_download` copying from local folders by pattern, `get_safetensors_metadata` from headers."""

    def __init__(self, repos: dict[str, Path], root: Path) -> None:
        self.repos, self.root, self.calls = repos, root, []

    def snapshot_download(self, repo, revision=None, allow_patterns=None):
        from fnmatch import fnmatch

        self.calls.append(("snapshot", repo, tuple(allow_patterns or ())))
        target = self.root / repo.replace("/", "--") / "abc123"
        target.mkdir(parents=True, exist_ok=True)
        for file in self.repos[repo].iterdir():
            if any(fnmatch(file.name, p) for p in allow_patterns):
                shutil.copy(file, target / file.name)
        return str(target)

    def get_safetensors_metadata(self, repo, revision=None):
        self.calls.append(("headers", repo))
        files = {}
        for file in self.repos[repo].glob("*.safetensors"):
            entries = read_header(file).entries
            files[file.name] = SimpleNamespace(tensors={
                n: SimpleNamespace(dtype=CODES[e.dtype], shape=list(e.shape)) for n, e in entries.items()})
        return SimpleNamespace(files_metadata=files)


@pytest.fixture
def hub(monkeypatch, llama, tmp_path):
    import huggingface_hub

    fake = FakeHub({"org/base": llama["base"], "org/e0": llama["experts"][0], "org/e1": llama["sharded"][1]}, tmp_path / "cache")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake.snapshot_download)
    monkeypatch.setattr(huggingface_hub, "get_safetensors_metadata", fake.get_safetensors_metadata)
    return fake


def test_hub_ids_are_checked_before_weights_are_downloaded(hub, llama, tmp_path) -> None:
    method = TaskArithmetic()
    card = merge_checkpoints("org/base", ["org/e0", "org/e1"], method, str(tmp_path / "out"))
    expected = merge_state_dicts(folder_state(llama["base"]), [folder_state(llama["experts"][0]), folder_state(llama["sharded"][1])], method)
    got = folder_state(tmp_path / "out")
    assert all(torch.equal(got[n], expected[n]) for n in expected)
    first_weights = next(i for i, c in enumerate(hub.calls) if c[0] == "snapshot" and "*.safetensors" in c[2])
    assert [c[1] for c in hub.calls[:first_weights] if c[0] == "headers"] == ["org/base", "org/e0", "org/e1"]
    assert card["experts"][0]["revision"] == "abc123"


def test_a_remote_mismatch_fails_before_any_weight_download(hub, llama, tmp_path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(llama["experts"][0], bad)
    state = folder_state(bad)
    state["model.norm.weight"] = torch.zeros(31)
    save_file(state, str(bad / "model.safetensors"))
    hub.repos["org/bad"] = bad
    with pytest.raises(CheckpointError, match=r"org/bad.*'model.norm.weight'.*\(31,\).*\(32,\)"):
        merge_checkpoints("org/base", ["org/bad"], TaskArithmetic(), str(tmp_path / "out"))
    assert not any(c[0] == "snapshot" and "*.safetensors" in c[2] for c in hub.calls)
    assert not (tmp_path / "out").exists()


def test_offline_hub_id_fails_naming_it(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert classify("someone/nothing-here") == "hub"
    with pytest.raises(CheckpointError, match="hub id 'someone/nothing-here': cannot be resolved"):
        merge_checkpoints("someone/nothing-here", ["someone/else"], TaskArithmetic(), str(tmp_path / "out"))
