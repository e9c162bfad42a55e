"""The whole pipeline on a tiny BERT and two real tasks: run, report, rerun skips, --force retrains."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from stage_recorder import Recorder

from neuroflow.evaluation.report import load_report
from neuroflow.pipeline import PipelineRunner, load_recipe
from neuroflow.pipeline.table import render_rows_table

RECIPE = """\
# python -m neuroflow run recipe.yaml
name: tiny
backbone: {backbone}
data_dir: {data_dir}
tasks: [trec, sms_spam]
caps: {{train: 48, validation: 24, test: 40}}
output_dir: {out}
training:
  max_epochs: 1
  model: {{optimizer: {{class_path: neuroflow.models.optim.AdamW, init_args: {{lr: 1.0e-3}}}}}}
  data: {{batch_size: 16, max_length: 24}}
  trainer: {{enable_progress_bar: false, enable_model_summary: false, logger: false}}
multitask: {{enabled: true}}
merges:
  - name: ties
    method: {{class_path: neuroflow.merging.TIES, init_args: {{mask_rate: 0.5}}}}
  - name: nm_val
    method: {{class_path: neuroflow.merging.NeuroMerging}}
    search: {{lambda_2: [auto, 1.0]}}
evaluation:
  data: {{eval_batch_size: 64, max_length: 24}}
  trainer: {{enable_progress_bar: false, enable_model_summary: false}}
"""


def _created(out: Path) -> dict[str, str]:
    return {t: json.loads((out / "experts" / t / "expert.json").read_text())["created_at"] for t in ("trec", "sms_spam")}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory, tiny_bert: str, shared_data_dir: str):
    root = tmp_path_factory.mktemp("pipeline")
    path = root / "recipe.yaml"
    path.write_text(RECIPE.format(backbone=tiny_bert, data_dir=shared_data_dir, out=root / "out"))
    recorder = Recorder()
    lines: list[str] = []
    combined = PipelineRunner(load_recipe(path), launcher=recorder, echo=lines.append).run()
    return path, root / "out", recorder, combined, lines


def test_run_writes_the_combined_report(first_run) -> None:
    _, out, recorder, combined, lines = first_run
    assert recorder.ran == ["fit_trec", "fit_sms_spam", "fit_multitask", "test_multitask", "test_pretrained",
                            "test_individual", "merge_ties", "merge_nm_val"]
    for name in ("report.json", "report.md", "report.png", "summary.md", "pipeline_state.json"):
        assert (out / name).is_file(), name
    assert [r["name"] for r in combined["runs"]] == ["pretrained", "individual", "multitask", "ties", "nm_val"]
    # every cell of the combined table is the value of that row's own report, and the normalized
    # score is that value over the individual expert's
    individual = load_report(out / "eval" / "individual")
    for row, run_dir in [("pretrained", out / "eval" / "pretrained"), ("multitask", out / "eval" / "multitask"),
                         ("ties", out / "merged" / "ties"), ("nm_val", out / "merged" / "nm_val")]:
        report = load_report(run_dir)
        for task in ("trec", "sms_spam"):
            entry = report["tasks"][task]
            value = entry["metrics"][entry["primary_metric"]]
            cell = combined["tasks"][task]["runs"][row]
            assert cell["value"] == pytest.approx(value)
            ref = individual["tasks"][task]["metrics"]["accuracy"]
            assert cell["normalized"] == pytest.approx(value / ref)
        expected = sum(combined["tasks"][t]["runs"][row]["normalized"] for t in ("trec", "sms_spam")) / 2
        assert combined["average"]["runs"][row]["normalized"] == pytest.approx(expected)
    # the merged model exists; the search tried both candidates
    assert (out / "merged" / "ties" / "merge_card.json").is_file()
    search = load_report(out / "merged" / "nm_val")["search"]
    assert [c["params"] for c in search["candidates"]] == [{"lambda_2": "auto"}, {"lambda_2": 1.0}]
    table = render_rows_table(combined)
    assert "| nm_val |" in table and "trec (accuracy)" in table
    assert any("| nm_val |" in line for line in lines)  # printed at the end
    state = json.loads((out / "pipeline_state.json").read_text())
    assert all(rec["status"] == "done" and rec["wall_s"] > 0 for rec in state["stages"].values())
    # every stage's output is also in its own log file (the in-process launcher tees it)
    assert sorted(p.stem for p in (out / "logs").glob("*.log")) == sorted(recorder.ran)
    assert "config saved to" in (out / "logs" / "fit_trec.log").read_text()
    assert "# ties (test)" in (out / "logs" / "merge_ties.log").read_text()


def test_rerun_skips_experts_and_force_retrains(first_run) -> None:
    path, out, _, _, _ = first_run
    before = _created(out)
    recorder = Recorder()
    PipelineRunner(load_recipe(path), launcher=recorder, echo=lambda _: None).run()
    assert recorder.ran == []          # experts, joint model and unchanged evaluations are all skipped
    assert _created(out) == before

    # a changed merge config reruns only that merge
    recorder = Recorder()
    PipelineRunner(load_recipe(path, overrides=["merges.0.method.init_args.mask_rate=0.6"]), launcher=recorder,
                   echo=lambda _: None).run()
    assert recorder.ran == ["merge_ties"]

    recorder = Recorder()
    PipelineRunner(load_recipe(path), force=True, only=["fit"], launcher=recorder, echo=lambda _: None).run()
    assert recorder.ran == ["fit_trec", "fit_sms_spam"]
    after = _created(out)
    assert all(after[t] != before[t] for t in before)
