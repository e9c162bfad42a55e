import json

import pytest

from neuroflow.evaluation.report import (
    build_report,
    combine_reports,
    load_report,
    main,
    metrics_from_logged,
    normalized_score,
    write_report,
)


def _report(name="neuromerging", trec=0.6, sst2=0.45):
    return build_report(
        name,
        {"trec": {"accuracy": trec}, "sst2": {"accuracy": sst2, "f1_macro": 0.4}},
        primary={"trec": "accuracy", "sst2": "accuracy"},
        expert_metrics={"trec": {"accuracy": 0.8}, "sst2": {"accuracy": 0.9, "f1_macro": 0.5}},
        expert_source={"trec": "manifest", "sst2": "evaluated"},
        model={"kind": "merged"},
    )


def test_normalized_score_edge_cases():
    assert normalized_score(0.6, 0.8) == pytest.approx(0.75)
    assert normalized_score(0.6, 0.0) is None
    assert normalized_score(0.6, -0.2) is None
    assert normalized_score(None, 0.8) is None
    assert normalized_score(float("nan"), 0.8) is None


def test_metrics_from_logged_strips_dataloader_suffix_and_ignores_other_stages():
    logged = {
        "test/trec/accuracy": 0.5,
        "test/sst2/accuracy/dataloader_idx_1": 0.25,
        "test/avg/score": 0.375,
        "val/trec/accuracy": 0.9,
    }
    assert metrics_from_logged(logged, "test", ["trec", "sst2"]) == {
        "trec": {"accuracy": 0.5},
        "sst2": {"accuracy": 0.25},
    }
    with pytest.raises(KeyError, match="cola"):
        metrics_from_logged(logged, "test", ["trec", "cola"])


def test_build_report_numbers():
    report = _report()
    assert report["tasks"]["trec"]["normalized"] == pytest.approx(0.75)
    assert report["tasks"]["sst2"]["normalized"] == pytest.approx(0.5)
    assert report["average"]["score"] == pytest.approx((0.6 + 0.45) / 2)
    assert report["average"]["expert_score"] == pytest.approx((0.8 + 0.9) / 2)
    assert report["average"]["normalized"] == pytest.approx((0.75 + 0.5) / 2)
    # f1 exists for one task only: averaged over that one
    assert report["average"]["metrics"]["f1_macro"] == pytest.approx(0.4)
    assert report["tasks"]["sst2"]["expert_source"] == "evaluated"


def test_build_report_refuses_missing_primary_metric():
    with pytest.raises(KeyError, match="mcc"):
        build_report("x", {"cola": {"accuracy": 0.5}}, primary={"cola": "mcc"})


def test_write_report_files_and_markdown(tmp_path):
    report = _report()
    report["search"] = {
        "candidates": [{"params": {"scaling": 0.5}, "score": 0.7}, {"params": {"scaling": 1.0}, "score": 0.8}],
        "best": {"params": {"scaling": 1.0}, "score": 0.8},
    }
    paths = write_report(report, tmp_path / "run")
    assert json.loads(paths["json"].read_text())["tasks"]["trec"]["normalized"] == pytest.approx(0.75)
    md = paths["md"].read_text()
    assert "| trec | accuracy * | 60.00 | 80.00 | 0.7500 |" in md
    assert "| **average** | primary | 52.50 | 85.00 | 0.6250 |" in md
    assert '`{"scaling": 1.0}` **(best)** | 0.8000' in md
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["report.json", "report.md", "report.png"]


def test_combine_reports_cli(tmp_path, capsys):
    write_report(_report("neuromerging", 0.6, 0.45), tmp_path / "a")
    write_report(_report("ties", 0.4, 0.9), tmp_path / "b")
    combined = main(["combine", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "all")])
    assert combined["tasks"]["trec"]["runs"]["ties"]["normalized"] == pytest.approx(0.5)
    assert combined["average"]["runs"]["neuromerging"]["normalized"] == pytest.approx(0.625)
    assert combined["average"]["expert"] == pytest.approx(0.85)
    out = capsys.readouterr().out
    assert "| trec | accuracy | 80.00 | 60.00 (0.7500) | 40.00 (0.5000) |" in out
    assert (tmp_path / "all" / "report.png").is_file()
    assert json.loads((tmp_path / "all" / "report.json").read_text())["runs"][1]["name"] == "ties"


def test_combine_same_names_and_bad_inputs(tmp_path):
    write_report(_report(), tmp_path / "a")
    write_report(_report(), tmp_path / "b")
    combined = combine_reports([tmp_path / "a", tmp_path / "b"])
    assert [r["name"] for r in combined["runs"]] == ["neuromerging", "neuromerging#2"]
    with pytest.raises(FileNotFoundError, match="nothere"):
        load_report(tmp_path / "nothere")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "report.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="not a neuroflow report"):
        load_report(tmp_path / "c")
