"""End to end on tiny BERT experts: merge with every method, save, test, report; every number is
checked against a direct computation (plain transformers + the saved head tensors)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModel

from neuroflow.evaluation import MergeModule, load_merged
from neuroflow.experts import load_manifest
from neuroflow.merging import DARE, TIES, NeuroMerging, TaskArithmetic, WeightAveraging, merge_state_dicts
from eval_helpers import TASKS, make_datamodule, quiet_trainer

METHODS = {
    "neuromerging": NeuroMerging(),
    "ties": TIES(mask_rate=0.8),
    "task_arithmetic": TaskArithmetic(scaling=0.3),
    "averaging": WeightAveraging(),
    "dare": DARE(drop_rate=0.5, then="ties", seed=0),
}


@pytest.mark.parametrize("name", list(METHODS))
def test_merge_each_method_end_to_end(name, direct, trained_experts, shared_data_dir, eval_cache, tmp_path):
    method = METHODS[name]
    dm = make_datamodule(direct.tiny_bert, shared_data_dir, eval_cache)
    model = MergeModule(experts=str(trained_experts), method=method, tasks=dm.task_specs)
    out = tmp_path / "merged"
    result = quiet_trainer().merge(model, datamodule=dm, output_dir=str(out), reference="evaluate")

    for rel in ("backbone/config.json", "backbone/model.safetensors", "backbone/tokenizer.json",
                "heads.safetensors", "merge_card.json", "report.json", "report.md", "report.png"):
        assert (out / rel).is_file(), rel
    assert [p.name for p in tmp_path.iterdir()] == ["merged"]  # no temporary directory left

    # The saved backbone is exactly the engine's merge of the experts, and loads with plain AutoModel.
    merged = AutoModel.from_pretrained(out / "backbone")
    expected = merge_state_dicts(direct.base, direct.experts, method, routing=direct.routing)
    saved = merged.state_dict()
    for key, value in expected.items():
        torch.testing.assert_close(saved[key], value, rtol=0, atol=2e-6, msg=key)
    assert any(not torch.equal(saved[k], direct.base[k]) for k in expected)

    report = json.loads((out / "report.json").read_text())
    merged_acc = direct.metrics({k: v.clone() for k, v in saved.items()}, "test")
    expert_acc = direct.expert_metrics("test")
    for task in TASKS:
        entry = report["tasks"][task]
        assert entry["metrics"]["accuracy"] == pytest.approx(merged_acc[task], abs=1e-6)
        assert entry["expert"]["accuracy"] == pytest.approx(expert_acc[task], abs=1e-6)
        assert entry["expert_source"] == "evaluated"
        assert entry["normalized"] == pytest.approx(merged_acc[task] / expert_acc[task], abs=1e-6)
    assert report["average"]["score"] == pytest.approx(sum(merged_acc.values()) / 2, abs=1e-6)
    assert report["name"] == name
    card = json.loads((out / "merge_card.json").read_text())
    assert card["method"]["init_args"] == method.hparams()
    assert card["merge_info"]["num_experts"] == 2 and card["timings"]["merge_s"] >= 0
    assert result["report"]["tasks"]["trec"]["metrics"] == report["tasks"]["trec"]["metrics"]
    # The experts' neuron-subspace analysis is written beside the model and shown in the report.
    analysis = json.loads((out / "analysis.json").read_text())
    assert analysis["tasks"] == list(TASKS) and (out / "analysis.png").is_file()
    assert "## Neuron-subspace analysis" in (out / "report.md").read_text()


def test_saved_merged_model_scores_the_same(direct, trained_experts, shared_data_dir, eval_cache, tmp_path):
    dm = make_datamodule(direct.tiny_bert, shared_data_dir, eval_cache)
    model = MergeModule(experts=str(trained_experts), method=TIES(), tasks=dm.task_specs)
    out = tmp_path / "ties"
    quiet_trainer().merge(model, datamodule=dm, output_dir=str(out), reference="evaluate")
    reloaded = load_merged(out, tasks=dm.task_specs)
    reloaded.report_dir = str(tmp_path / "again")
    quiet_trainer().test(reloaded, datamodule=dm, verbose=False)
    first = json.loads((out / "report.json").read_text())
    again = json.loads((tmp_path / "again" / "report.json").read_text())
    for task in TASKS:
        assert again["tasks"][task]["metrics"] == first["tasks"][task]["metrics"]
        # the expert reference comes from the merged directory's own report
        assert again["tasks"][task]["expert"] == first["tasks"][task]["expert"]


@pytest.mark.parametrize("fast_search", [True, False])
def test_validation_search_picks_the_directly_computed_best(fast_search, direct, trained_experts, shared_data_dir, eval_cache, tmp_path):
    grid = [0.0, 0.5, 1.0, 3.0, 10.0]
    dm = make_datamodule(direct.tiny_bert, shared_data_dir, eval_cache)
    model = MergeModule(experts=str(trained_experts), method=TaskArithmetic(), tasks=dm.task_specs,
                        search={"scaling": grid}, fast_search=fast_search)
    out = tmp_path / "ta_search"
    quiet_trainer().merge(model, datamodule=dm, output_dir=str(out), reference="evaluate")
    card = json.loads((out / "merge_card.json").read_text())

    expert_val = direct.expert_metrics("val")
    scores = []
    for scaling in grid:
        weights = merge_state_dicts(direct.base, direct.experts, TaskArithmetic(scaling=scaling), routing=direct.routing)
        val = direct.metrics(weights, "val")
        scores.append(sum(val[t] / expert_val[t] for t in TASKS) / len(TASKS))
    assert len(set(scores)) > 1, "the grid should separate the candidates"
    best = scores.index(max(scores))
    recorded = card["search"]["candidates"]
    assert [c["params"]["scaling"] for c in recorded] == grid
    assert [c["score"] for c in recorded] == pytest.approx(scores, abs=1e-6)
    assert card["search"]["best"]["params"] == {"scaling": grid[best]}
    assert card["method"]["init_args"] == {"scaling": grid[best]}
    report = json.loads((out / "report.json").read_text())
    assert report["name"] == "task_arithmetic_search"
    assert report["search"]["best_index"] == best
    assert "## Validation search" in (out / "report.md").read_text()
    assert card["search"]["fast"] is fast_search
    # The saved model is the engine's exact merge of the winner, not a basis combination.
    saved = AutoModel.from_pretrained(out / "backbone").state_dict()
    exact = merge_state_dicts(direct.base, direct.experts, TaskArithmetic(scaling=grid[best]), routing=direct.routing)
    for key, value in exact.items():
        torch.testing.assert_close(saved[key], value, rtol=0, atol=2e-6, msg=key)


def test_reference_report_for_test_and_manifest_for_search(direct, trained_experts, shared_data_dir, eval_cache, tmp_path):
    from neuroflow.evaluation import ExpertsModule

    dm = make_datamodule(direct.tiny_bert, shared_data_dir, eval_cache)
    experts = ExpertsModule(experts=str(trained_experts), tasks=dm.task_specs, report_dir=str(tmp_path / "experts"))
    quiet_trainer().test(experts, datamodule=dm, verbose=False)
    model = MergeModule(experts=str(trained_experts), method=TIES(), tasks=dm.task_specs, search={"scaling": [0.5, 1.0]})
    quiet_trainer().merge(model, datamodule=dm, output_dir=str(tmp_path / "m"), reference=str(tmp_path / "experts"))
    report = json.loads((tmp_path / "m" / "report.json").read_text())
    expert_report = json.loads((tmp_path / "experts" / "report.json").read_text())
    manifest_val = {e["task"]: e["metrics"] for e in load_manifest(trained_experts)}
    for task in TASKS:
        assert report["tasks"][task]["expert"] == expert_report["tasks"][task]["metrics"]
        assert report["tasks"][task]["expert_source"] == f"report:{tmp_path / 'experts'}"
        assert report["search"]["reference_source"][task] == "manifest"
        assert report["search"]["reference"][task]["accuracy"] == pytest.approx(manifest_val[task][f"val/{task}/accuracy"])
