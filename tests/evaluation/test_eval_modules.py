"""`test` with the reference rows: the pre-trained backbone with the experts' heads, and the experts."""

from __future__ import annotations

import json

import pytest

from neuroflow.evaluation import ExpertsModule, PretrainedModule
from eval_helpers import TASKS, make_datamodule, quiet_trainer


def test_pretrained_module_scores_base_with_expert_heads(direct, trained_experts, shared_data_dir, eval_cache, tmp_path):
    dm = make_datamodule(direct.tiny_bert, shared_data_dir, eval_cache)
    module = PretrainedModule(experts=str(trained_experts), tasks=dm.task_specs, report_dir=str(tmp_path / "pre"))
    quiet_trainer().test(module, datamodule=dm, verbose=False)
    report = json.loads((tmp_path / "pre" / "report.json").read_text())
    expected = direct.metrics({k: v.clone() for k, v in direct.base.items()}, "test")
    for task in TASKS:
        assert report["tasks"][task]["metrics"]["accuracy"] == pytest.approx(expected[task], abs=1e-6)
    assert report["name"] == "pretrained" and report["model"]["kind"] == "pretrained"
    # Examples behind each score, and the resolvable base (issue 13, items 19 and 6).
    assert all(report["tasks"][t]["n"] == 41 and report["tasks"][t]["interval"]["method"] == "wilson" for t in TASKS)
    assert report["model"]["base_model_ref"]["fingerprint"] == report["model"]["base_fingerprint"]


def test_experts_module_scores_each_task_with_its_expert(direct, trained_experts, shared_data_dir, eval_cache, tmp_path):
    dm = make_datamodule(direct.tiny_bert, shared_data_dir, eval_cache)
    module = ExpertsModule(experts=str(trained_experts), tasks=dm.task_specs, report_dir=str(tmp_path / "experts"))
    quiet_trainer().test(module, datamodule=dm, verbose=False)
    report = json.loads((tmp_path / "experts" / "report.json").read_text())
    expected = direct.expert_metrics("test")
    for task in TASKS:
        assert report["tasks"][task]["metrics"]["accuracy"] == pytest.approx(expected[task], abs=1e-6)
        assert report["tasks"][task]["normalized"] == pytest.approx(1.0)
    assert module.active_task == TASKS[-1]
