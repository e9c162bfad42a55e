"""Bad input fails early with a message naming the culprit, and leaves no partial output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import neuroflow.commands.merge as merge_command
from neuroflow.commands.cli import main as cli_main
from neuroflow.evaluation import MergeModule
from neuroflow.experts import ExpertInputError, ExpertSet
from neuroflow.merging import TIES
from eval_helpers import make_datamodule, quiet_trainer


def edit_entry(experts: Path, task: str, **changes) -> None:
    path = experts / task / "expert.json"
    entry = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            entry.pop(key, None)
        else:
            entry[key] = value
    path.write_text(json.dumps(entry))
    (experts / "manifest.json").unlink(missing_ok=True)


def merge_config(tmp_path: Path, experts: Path, out: Path, method: str = "neuroflow.merging.TIES") -> Path:
    config = tmp_path / "merge.yaml"
    config.write_text(
        "model:\n  class_path: neuroflow.evaluation.MergeModule\n  init_args:\n"
        f"    experts: {experts}\n    method:\n      class_path: {method}\n"
        "trainer:\n  accelerator: cpu\n  logger: false\n"
        f"output_dir: {out}\nevaluate: false\n"
    )
    return config


def test_experts_from_different_bases(experts_copy, tmp_path):
    edit_entry(experts_copy, "sst2", base_fingerprint="sha256:" + "0" * 64)
    with pytest.raises(ExpertInputError, match=r"experts 'sst2' and 'trec' come from different bases: base_fingerprint"):
        ExpertSet(experts_copy)
    out = tmp_path / "out"
    # Through the CLI, jsonargparse wraps the error but keeps its message.
    with pytest.raises(ValueError, match="experts 'sst2' and 'trec' come from different bases"):
        cli_main(["merge", "--config", str(merge_config(tmp_path, experts_copy, out))])
    assert not out.exists()


def test_base_weights_differ_from_the_experts_base(experts_copy, tiny_bert, tmp_path):
    # Same name and recorded fingerprint, but the weights on disk changed: caught by hashing them.
    other = tmp_path / "other_bert"
    shutil.copytree(tiny_bert, other)
    weights = load_file(str(other / "model.safetensors"))
    name = sorted(weights)[0]
    weights[name] = weights[name] + 1e-3
    save_file(weights, str(other / "model.safetensors"))
    for task in ("trec", "sst2"):
        edit_entry(experts_copy, task, base_model=str(other))
    with pytest.raises(ExpertInputError, match=r"has fingerprint sha256:\w+, but the experts \(sst2, trec\|trec, sst2\)|were trained from"):
        MergeModule(experts=str(experts_copy), method=TIES())


def test_missing_expert_file(experts_copy):
    (experts_copy / "trec" / "task_vector.safetensors").unlink()
    with pytest.raises(ExpertInputError, match=r"expert 'trec': backbone file .*trec/task_vector.safetensors is missing"):
        MergeModule(experts=str(experts_copy), method=TIES())


def test_task_without_head(experts_copy):
    edit_entry(experts_copy, "trec", head=None, heads=None)
    with pytest.raises(ExpertInputError, match="expert 'trec': task 'trec' has no head"):
        MergeModule(experts=str(experts_copy), method=TIES())


def test_requested_task_without_expert(trained_experts):
    with pytest.raises(ExpertInputError, match=r"no expert for task\(s\) \['cola'\].*available for \['sst2', 'trec'\]"):
        ExpertSet(trained_experts, ["trec", "cola"])


def test_duplicate_tasks_when_listing_experts(trained_experts):
    with pytest.raises(ExpertInputError, match="two experts for task 'trec'"):
        ExpertSet([str(trained_experts / "trec"), str(trained_experts / "trec" / "expert.json")])
    assert ExpertSet([str(trained_experts / "sst2")]).tasks == ["sst2"]


def test_unknown_method_name(trained_experts, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit):
        cli_main(["merge", "--config", str(merge_config(tmp_path, trained_experts, out, "neuroflow.merging.NoSuchMethod"))])
    assert "NoSuchMethod" in capsys.readouterr().err
    assert not out.exists()


def test_unknown_search_key_fails_before_loading(trained_experts):
    with pytest.raises(ValueError, match=r"\['lambda_3'\] are not hyperparameters of TIES"):
        MergeModule(experts=str(trained_experts), method=TIES(), search={"lambda_3": [1.0]})
    with pytest.raises(ValueError, match="'scaling' must be a non-empty list"):
        MergeModule(experts=str(trained_experts), method=TIES(), search={"scaling": []})


def test_failure_leaves_no_partial_output_and_keeps_the_old_one(
    trained_experts, tiny_bert, shared_data_dir, eval_cache, tmp_path, monkeypatch
):
    out = tmp_path / "merged"
    out.mkdir()
    (out / "merge_card.json").write_text("{}")  # an earlier merge result

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(merge_command, "write_report", broken)
    dm = make_datamodule(tiny_bert, shared_data_dir, eval_cache)
    model = MergeModule(experts=str(trained_experts), method=TIES(), tasks=dm.task_specs)
    with pytest.raises(OSError, match="disk full"):
        quiet_trainer().merge(model, datamodule=dm, output_dir=str(out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]
    assert [p.name for p in out.iterdir()] == ["merge_card.json"]


def test_output_dir_that_is_not_a_merge_result_is_never_replaced(trained_experts, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    model = MergeModule(experts=str(trained_experts), method=TIES())
    with pytest.raises(FileExistsError, match="is not a merged model directory"):
        quiet_trainer().merge(model, evaluate=False, output_dir=str(out))
    assert (out / "notes.txt").read_text() == "keep me"


def test_merge_needs_data_to_evaluate(trained_experts, tmp_path):
    model = MergeModule(experts=str(trained_experts), method=TIES())
    with pytest.raises(ValueError, match="needs `data` to evaluate"):
        quiet_trainer().merge(model, datamodule=None, output_dir=str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()


def test_cli_config_left_by_a_failed_run_does_not_block_the_next(trained_experts, tmp_path):
    out = tmp_path / "merged"
    out.mkdir()
    (out / "config.yaml").write_text("# saved by LightningCLI before the merge finished\n")
    model = MergeModule(experts=str(trained_experts), method=TIES())
    quiet_trainer().merge(model, evaluate=False, output_dir=str(out))
    assert (out / "merge_card.json").is_file() and (out / "config.yaml").is_file()
