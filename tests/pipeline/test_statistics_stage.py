"""A recipe with data-aware merges plans and runs the statistics pass itself: one `stats` stage per
expert before the merges, skipped on a rerun while its files are there, labelled in the table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from stage_recorder import Recorder

from neuroflow.commands.errors import UsageError
from neuroflow.commands.run import check_stage
from neuroflow.pipeline import PipelineRunner, load_recipe
from neuroflow.pipeline.plan import plan_recipe
from neuroflow.pipeline.recipe import RecipeError
from neuroflow.pipeline.slurm import render_slurm

RECIPE = """\
# python -m neuroflow run recipe.yaml
name: tiny_stats
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
task_training:
  sms_spam: {{data: {{batch_size: 8}}}}
baselines: {{pretrained: false, individual: true}}
statistics: {{max_batches: 2, threads: 1}}
merges:
  - name: ties
    method: {{class_path: neuroflow.merging.TIES, init_args: {{mask_rate: 0.5}}}}
  - name: regmean
    method: {{class_path: neuroflow.merging.RegMean, init_args: {{alpha: 0.9}}}}
  - name: fisher
    method: {{class_path: neuroflow.merging.FisherMerging}}
evaluation:
  data: {{eval_batch_size: 64, max_length: 24}}
  trainer: {{enable_progress_bar: false, enable_model_summary: false}}
"""


def _write(root: Path, backbone: str, data_dir: str, body: str = RECIPE) -> Path:
    path = root / "recipe.yaml"
    path.write_text(body.format(backbone=backbone, data_dir=data_dir, out=root / "out"))
    return path


@pytest.fixture(scope="module")
def stats_run(tmp_path_factory: pytest.TempPathFactory, tiny_bert: str, shared_data_dir: str):
    root = tmp_path_factory.mktemp("stats_pipeline")
    path = _write(root, tiny_bert, shared_data_dir)
    recorder = Recorder()
    lines: list[str] = []
    combined = PipelineRunner(load_recipe(path), launcher=recorder, echo=lines.append, validator=check_stage).run()
    return path, root / "out", recorder, combined, lines


def test_the_statistics_pass_runs_before_the_merges_that_read_it(stats_run) -> None:
    _, out, recorder, combined, lines = stats_run
    assert recorder.ran == ["fit_trec", "fit_sms_spam", "test_individual", "stats_trec", "stats_sms_spam",
                            "merge_ties", "merge_regmean", "merge_fisher"]
    for task in ("trec", "sms_spam"):
        for kind in ("regmean", "fisher"):
            assert (out / "experts" / task / "statistics" / f"{kind}.safetensors").is_file(), (task, kind)
    # each expert's pass reads its own training data as its fit did (sms_spam's batch size is its own)
    config = (out / "configs" / "stats_sms_spam.yaml").read_text()
    assert config.startswith("# python -m neuroflow stats --config")
    assert "batch_size: 8" in config and "kinds: regmean,fisher" in config and "tasks: sms_spam" in config
    assert "tasks: trec" in (out / "configs" / "stats_trec.yaml").read_text()
    # at most max_batches batches of each expert's training data
    assert "max_batches: 2" in config
    # the data-aware rows are scored and labelled; the data-free one is not
    assert [r["name"] for r in combined["runs"]] == ["individual", "ties", "regmean", "fisher"]
    table = next(line for line in lines if "| regmean" in line)
    assert "| regmean (uses training data) |" in table and "| fisher (uses training data) |" in table
    assert "| ties |" in table and "ties (uses training data)" not in table
    for row in ("regmean", "fisher"):
        value = combined["average"]["runs"][row]["normalized"]
        assert value is not None and 0.0 < value < 2.0


def test_a_rerun_skips_the_statistics_until_their_files_go(stats_run) -> None:
    path, out, _, _, _ = stats_run
    recorder = Recorder()
    PipelineRunner(load_recipe(path), launcher=recorder, echo=lambda _: None, validator=check_stage).run()
    assert recorder.ran == []
    (out / "experts" / "trec" / "statistics" / "fisher.safetensors").unlink()
    recorder = Recorder()
    PipelineRunner(load_recipe(path), launcher=recorder, echo=lambda _: None, validator=check_stage).run()
    assert recorder.ran == ["stats_trec"]  # the merges read the same statistics again: up to date
    assert (out / "experts" / "trec" / "statistics" / "fisher.safetensors").is_file()
    state = json.loads((out / "pipeline_state.json").read_text())
    assert state["stages"]["stats_trec"]["status"] == "done"


def test_kinds_come_from_the_merge_methods(tmp_path: Path, tiny_bert: str, shared_data_dir: str) -> None:
    only_ties = RECIPE.split("  - name: regmean")[0] + "evaluation: {{}}\n"
    planner = plan_recipe(load_recipe(_write(tmp_path, tiny_bert, shared_data_dir, only_ties)))
    assert planner.statistics_kinds() == [] and planner.statistics_stages() == []
    # RegMean's fallback is a method too: a Fisher fallback needs the Fishers
    fallback = RECIPE.replace("init_args: {{alpha: 0.9}}",
                              "init_args: {{alpha: 0.9, fallback: {{class_path: neuroflow.merging.FisherMerging}}}}")
    fallback = fallback.split("  - name: fisher")[0] + "evaluation: {{}}\n"
    planner = plan_recipe(load_recipe(_write(tmp_path, tiny_bert, shared_data_dir, fallback)))
    assert planner.statistics_kinds() == ["regmean", "fisher"]
    regmean_only = RECIPE.split("  - name: fisher")[0] + "evaluation: {{}}\n"
    planner = plan_recipe(load_recipe(_write(tmp_path, tiny_bert, shared_data_dir, regmean_only)))
    assert planner.statistics_kinds() == ["regmean"]
    assert [s.name for s in planner.statistics_stages()] == ["stats_trec", "stats_sms_spam"]
    # the recipe may ask for kinds no merge reads (e.g. for a later merge by hand)
    explicit = only_ties.replace("statistics: {{max_batches: 2, threads: 1}}", "statistics: {{kinds: [fisher]}}")
    planner = plan_recipe(load_recipe(_write(tmp_path, tiny_bert, shared_data_dir, explicit)))
    assert planner.statistics_kinds() == ["fisher"]
    bad = only_ties.replace("statistics: {{max_batches: 2, threads: 1}}", "statistics: {{kinds: [gram]}}")
    with pytest.raises(RecipeError, match=r"statistics.kinds: unknown \['gram'\]"):
        plan_recipe(load_recipe(_write(tmp_path, tiny_bert, shared_data_dir, bad))).statistics_stages()
    typo = only_ties.replace("statistics: {{max_batches: 2, threads: 1}}", "statistics: {{max_batch: 2}}")
    with pytest.raises(RecipeError, match="did you mean 'max_batches'"):
        load_recipe(_write(tmp_path, tiny_bert, shared_data_dir, typo))


def test_a_bad_statistics_config_is_refused_before_anything_runs(stats_run) -> None:
    path, _, _, _, _ = stats_run
    stage = plan_recipe(load_recipe(path)).statistics_stages()[0]
    check_stage("stats", stage.config)  # the planned config parses as the command would
    with pytest.raises(UsageError, match="stats config"):
        check_stage("stats", {**stage.config, "max_batchez": 3})
    with pytest.raises(UsageError, match="stats config"):
        check_stage("stats", {**stage.config, "fisher_labels": "empirical"})


def test_slurm_runs_the_statistics_once_before_the_merges(stats_run, tmp_path: Path) -> None:
    path, _, _, _, _ = stats_run
    recipe = load_recipe(path)
    written = render_slurm(recipe, plan_recipe(recipe), tmp_path / "slurm")
    script = written["merge_eval.sbatch"].read_text()
    assert script.index("== stats_trec") < script.index("== merge_regmean")
    stats_line = next(line for line in script.splitlines() if "neuroflow stats" in line)
    assert stats_line.startswith("srun --ntasks=1") and "DDP_ARGS" not in stats_line
