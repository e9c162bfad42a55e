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


# -- counts, intervals, warnings and the chart (issue 13, item 19; the warnings of item 12)

from neuroflow.evaluation.report_chart import normalized_table  # noqa: E402
from neuroflow.evaluation.report_stats import bootstrap_interval, wilson_interval  # noqa: E402


def _confusion(correct: list[int], wrong: list[int]) -> list[list[float]]:
    """A (C+1) x (C+1) confusion matrix with `correct[c]` on the diagonal and `wrong[c]` predicted as the next class."""
    c = len(correct)
    cm = [[0.0] * (c + 1) for _ in range(c + 1)]
    for i in range(c):
        cm[i][i] = correct[i]
        cm[i][(i + 1) % c] = wrong[i]
    return cm


def _counted_report(name="neuromerging", kind="merged", trec=(150, 100), sst2=(150, 50)):
    """trec: 250 examples, accuracy trec[0]/250; sst2 primary metric f1 (bootstrap)."""
    cm_trec = _confusion([trec[0] // 2, trec[0] - trec[0] // 2], [trec[1] // 2, trec[1] - trec[1] // 2])
    cm_sst2 = _confusion([sst2[0] // 2, sst2[0] - sst2[0] // 2], [sst2[1] // 2, sst2[1] - sst2[1] // 2])
    from neuroflow.models.metrics import f1_from_confusion

    f1 = float(f1_from_confusion(torch.tensor(cm_sst2, dtype=torch.float64), 2))
    return build_report(
        name,
        {"trec": {"accuracy": trec[0] / sum(trec)}, "sst2": {"f1": f1}},
        primary={"trec": "accuracy", "sst2": "f1"},
        expert_metrics={"trec": {"accuracy": 0.8}, "sst2": {"f1": 0.85}},
        model={"kind": kind},
        confusions={"trec": cm_trec, "sst2": cm_sst2},
    )


import torch  # noqa: E402


def test_wilson_and_bootstrap_intervals():
    low, high = wilson_interval(60, 100)
    assert (low, high) == (pytest.approx(0.5020, abs=1e-4), pytest.approx(0.6906, abs=1e-4))
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)
    cm = _confusion([200, 200], [50, 50])
    b_low, b_high = bootstrap_interval(cm, "accuracy")
    w_low, w_high = wilson_interval(400, 500)
    assert b_low == pytest.approx(w_low, abs=0.01) and b_high == pytest.approx(w_high, abs=0.01)
    assert bootstrap_interval(cm, "mcc") == bootstrap_interval(cm, "mcc")  # seeded


def test_report_records_examples_and_95_intervals():
    report = _counted_report()
    trec, sst2 = report["tasks"]["trec"], report["tasks"]["sst2"]
    assert trec["n"] == 250 and sst2["n"] == 200
    assert trec["interval"]["method"] == "wilson" and sst2["interval"]["method"] == "bootstrap"
    assert (trec["interval"]["low"], trec["interval"]["high"]) == pytest.approx(wilson_interval(150, 250))
    assert sst2["interval"]["low"] < sst2["metrics"]["f1"] < sst2["interval"]["high"]
    assert trec["normalized_interval"] == pytest.approx([b / 0.8 for b in wilson_interval(150, 250)])
    low, high = report["average"]["normalized_interval"]
    assert low < report["average"]["normalized"] < high
    # Without counts (e.g. an older caller) the fields exist and say "unknown".
    assert _report()["tasks"]["trec"]["n"] is None and _report()["tasks"]["trec"]["interval"] is None


def test_merge_above_its_expert_is_warned_in_json_and_markdown(tmp_path):
    report = _counted_report(trec=(220, 30))  # 88% > the expert's 80%
    paths = write_report(report, tmp_path / "run")
    saved = json.loads(paths["json"].read_text())
    warned = [w for w in saved["warnings"] if w["kind"] == "normalized_above_1"]
    assert [w["task"] for w in warned] == ["trec"]
    md = paths["md"].read_text()
    assert "**Warning:** neuromerging scores above the trec expert: normalized 1.100" in md
    assert "| trec | accuracy * | 88.00 | 80.00 | 1.1000 | 250 |" in md
    # The experts' own report is not a merge: no such warning.
    assert json.loads(write_report(_counted_report("experts", "experts", trec=(220, 30)), tmp_path / "e")["json"]
                      .read_text())["warnings"] == []


def _combined(tmp_path):
    runs = {
        "individual": _counted_report("experts", "experts", trec=(200, 50), sst2=(170, 30)),
        "pretrained": _counted_report("pretrained", "pretrained", trec=(196, 54), sst2=(60, 140)),
        "neuromerging": _counted_report("neuromerging", trec=(170, 80), sst2=(150, 50)),
        "ties": _counted_report("ties", trec=(171, 79), sst2=(148, 52)),
    }
    runs["multitask"] = _counted_report("multitask", "multitask", trec=(190, 60), sst2=(160, 40))
    runs["multitask"]["model"]["class"] = "MultiTaskModule"
    del runs["ties"]["tasks"]["sst2"]  # a missing value
    for name, report in runs.items():
        write_report(report, tmp_path / name)
    return combine_reports([tmp_path / n for n in runs])


def test_combined_report_warns_about_a_weak_expert_and_keeps_counts(tmp_path):
    combined = _combined(tmp_path)
    assert combined["tasks"]["trec"]["runs"]["neuromerging"]["n"] == 250
    paths = write_report(combined, tmp_path / "all")
    saved = json.loads(paths["json"].read_text())
    weak = [w for w in saved["warnings"] if w["kind"] == "expert_not_better_than_pretrained"]
    assert [w["task"] for w in weak] == ["trec"]  # 80.0% vs 78.4%: within the noise
    md = paths["md"].read_text()
    assert "**Warning:** the trec expert (80.00) is not clearly better than the pre-trained backbone" in md
    trec_row = next(line for line in md.splitlines() if line.startswith("| trec | accuracy | 80.00 |"))
    assert trec_row.endswith("| 250 |")
    assert "| ties | 0.855 [" in md and "| - |" in md  # ties has no sst2: missing, not 0


def test_chart_draws_references_as_lines_and_missing_as_missing(tmp_path):
    combined = _combined(tmp_path)
    table = normalized_table(combined)
    kinds = {row["name"]: row["kind"] for row in table["rows"]}
    assert kinds == {"experts": "experts", "pretrained": "pretrained", "neuromerging": "merged",
                     "ties": "merged", "multitask": "joint"}
    ties = next(r for r in table["rows"] if r["name"] == "ties")
    assert ties["values"][1] is None and ties["bounds"][1] is None
    assert table["counts"] == [250, 200]
    paths = write_report(combined, tmp_path / "all")
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    single = write_report(_counted_report(), tmp_path / "one")
    assert single["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
