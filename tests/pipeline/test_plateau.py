"""The plateau check: experts' scores at the recipe's budget against a longer fit."""

from __future__ import annotations

import json

import pytest

from neuroflow.pipeline.plateau import manifest_scores, plateau_rows, render_plateau_table, report_scores


def _manifest(path, scores: dict[str, float]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    experts = [{"name": t, "task": t, "monitor": f"val/{t}/accuracy", "metrics": {f"val/{t}/accuracy": v, "val/avg/score": v}}
               for t, v in scores.items()]
    (path / "manifest.json").write_text(json.dumps({"version": 1, "experts": experts}))


def test_rows_flag_tasks_that_gain_more_than_the_tolerance(tmp_path) -> None:
    _manifest(tmp_path / "a", {"sst2": 0.80, "cola": 0.10, "trec": 0.90})
    _manifest(tmp_path / "b", {"sst2": 0.805, "cola": 0.25, "trec": 0.88})
    rows = plateau_rows(manifest_scores(tmp_path / "a"), manifest_scores(tmp_path / "b"), tolerance=0.01)
    assert [r.task for r in rows] == ["sst2", "cola", "trec"]
    assert rows[0].gain == pytest.approx(0.005) and rows[0].at_plateau
    assert rows[1].gain == pytest.approx(0.15) and not rows[1].at_plateau
    # Scoring 2 points lower with the longer budget is not "within 1 point" either.
    assert rows[2].gain == pytest.approx(-0.02) and not rows[2].at_plateau
    table = render_plateau_table(rows)
    assert "| cola | accuracy | 10.00 | 25.00 | +15.00 |" in table
    assert "1 of 3 experts within 1 point" in table


def test_test_scores_count_when_both_reports_exist(tmp_path) -> None:
    _manifest(tmp_path / "a", {"sst2": 0.80})
    _manifest(tmp_path / "b", {"sst2": 0.80})
    report = {"tasks": {"sst2": {"primary_metric": "accuracy", "metrics": {"accuracy": 0.70}}}}
    (tmp_path / "r1.json").write_text(json.dumps(report))
    report["tasks"]["sst2"]["metrics"]["accuracy"] = 0.75
    (tmp_path / "r2.json").write_text(json.dumps(report))
    rows = plateau_rows(manifest_scores(tmp_path / "a"), manifest_scores(tmp_path / "b"),
                        report_scores(tmp_path / "r1.json"), report_scores(tmp_path / "r2.json"))
    assert rows[0].test == (0.70, 0.75) and not rows[0].at_plateau  # equal on validation, +5 on test
    assert report_scores(tmp_path / "missing.json") == {}


def test_missing_manifest_and_monitor_are_named(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no experts manifest"):
        manifest_scores(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"experts": [{"name": "x", "task": "x", "monitor": "val/x/f1", "metrics": {}}]}))
    with pytest.raises(KeyError, match="expert 'x' has no value for its monitor 'val/x/f1'"):
        manifest_scores(tmp_path)


def test_longer_budget_scales_the_recipe_and_each_task_s_own_budget(tmp_path) -> None:
    from neuroflow.pipeline.plateau import longer_budget
    from neuroflow.pipeline.recipe import load_recipe

    path = tmp_path / "r.yaml"
    path.write_text(
        "name: r\nbackbone: some/model\ntasks: [sst2, cola, trec]\n"
        "training: {max_epochs: 4, early_stopping: {patience: 1}}\n"
        "task_training: {cola: {max_epochs: 8, early_stopping: {patience: 2}}, trec: {data: {batch_size: 4}}}\n"
    )
    sets = longer_budget(load_recipe(path), 2.0)
    assert sets == [
        "training.max_epochs=8", "training.early_stopping.patience=2",
        "task_training.cola.max_epochs=16", "task_training.cola.early_stopping.patience=4",
    ]
    # Applied as overrides, every expert's budget is doubled, trec's through the recipe's.
    longer = load_recipe(path, overrides=sets)
    assert [longer.expert_training(t).max_epochs for t in ("sst2", "cola", "trec")] == [8, 16, 8]
    assert longer.expert_training("cola").early_stopping == {"patience": 4}
