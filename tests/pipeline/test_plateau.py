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
