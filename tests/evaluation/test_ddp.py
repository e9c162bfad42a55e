"""Evaluation across processes: `python -m neuroflow test` on 2 CPU processes (DDP, gloo) gives
exactly the metrics of 1 process. The test sets have 41 examples (odd), so a sampler that pads the
shards with repeated examples (Lightning's DistributedSampler) would count one twice and change
the numbers; neuroflow's DataModule shards without padding (21 + 20) and the metrics are
confusion-matrix sums reduced across processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from neuroflow.commands.cli import main as cli_main
from neuroflow.data import resolve_task
from neuroflow.data.samplers import ShardSampler
from neuroflow.evaluation import MergeModule
from neuroflow.merging import NeuroMerging
from eval_helpers import EVAL_EXAMPLES, TASKS, make_datamodule, quiet_trainer

REPO = Path(__file__).resolve().parents[2]


def write_data_config(path: Path, tiny_bert: str, data_dir: str, cache: Path) -> Path:
    config = {
        "class_path": "neuroflow.data.MultiTaskDataModule",
        "init_args": {"tasks": TASKS, "data_dir": data_dir, "tokenizer": tiny_bert, "max_length": 32,
                      "eval_batch_size": 8, "max_eval_examples": EVAL_EXAMPLES, "cache_dir": str(cache)},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def run_cli(args: list[str], cwd: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "neuroflow", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_shards_are_uneven_and_unpadded():
    shards = [list(ShardSampler(EVAL_EXAMPLES, rank, 2)) for rank in range(2)]
    assert sorted(len(s) for s in shards) == [20, 21]
    assert sorted(shards[0] + shards[1]) == list(range(EVAL_EXAMPLES))


def test_two_processes_equal_one_process(tiny_bert, trained_experts, shared_data_dir, eval_cache, tmp_path):
    dm = make_datamodule(tiny_bert, shared_data_dir, eval_cache)
    model = MergeModule(experts=str(trained_experts), method=NeuroMerging(), tasks=dm.task_specs)
    merged = tmp_path / "merged"
    quiet_trainer().merge(model, datamodule=None, evaluate=False, output_dir=str(merged))
    data = write_data_config(tmp_path / "data.yaml", tiny_bert, shared_data_dir, eval_cache)

    reports = {}
    for devices in (1, 2):
        out = tmp_path / f"report_{devices}"
        args = ["test", "--model", "neuroflow.evaluation.MergedModel", "--model.merged_dir", str(merged),
                "--model.report_dir", str(out), "--data", str(data), "--trainer.accelerator", "cpu",
                "--trainer.devices", str(devices), "--trainer.strategy", "ddp" if devices > 1 else "auto",
                "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
                "--trainer.default_root_dir", str(tmp_path / f"root_{devices}")]  # its config.yaml goes there
        if devices == 1:
            cli_main(args)  # the same command in this process (saves an interpreter start)
        else:
            run_cli(args, cwd=tmp_path)
        reports[devices] = json.loads((out / "report.json").read_text())
    for task in TASKS:
        assert reports[2]["tasks"][task]["metrics"] == reports[1]["tasks"][task]["metrics"]
        assert 0.0 < reports[1]["tasks"][task]["metrics"]["accuracy"] < 1.0  # padding would change it
        # The counts behind n and the 95% interval are summed across processes too.
        assert reports[2]["tasks"][task]["n"] == reports[1]["tasks"][task]["n"] == EVAL_EXAMPLES
        assert reports[2]["tasks"][task]["interval"] == reports[1]["tasks"][task]["interval"] is not None
    assert reports[2]["average"] == reports[1]["average"]
    assert (reports[1]["run"]["world_size"], reports[2]["run"]["world_size"]) == (1, 2)


def merge_config(path: Path, experts: Path, out: Path) -> Path:
    path.write_text(yaml.safe_dump({
        "model": {"class_path": "neuroflow.evaluation.MergeModule",
                  "init_args": {"experts": str(experts),
                                "method": {"class_path": "neuroflow.merging.TaskArithmetic"},
                                "search": {"scaling": [0.3, 1.0]}}},
        "trainer": {"accelerator": "cpu", "logger": False, "enable_progress_bar": False},
        "output_dir": str(out),
        "reference": "evaluate",
    }))
    return path


@pytest.mark.slow
def test_merge_command_with_search_on_two_processes(tiny_bert, trained_experts, shared_data_dir, eval_cache, tmp_path):
    """The whole `merge` command (search on validation, merge, save, test, experts' evaluation) on
    2 processes writes the same merged weights and report numbers as on 1."""
    data = write_data_config(tmp_path / "data.yaml", tiny_bert, shared_data_dir, eval_cache)
    reports, cards = {}, {}
    for devices in (1, 2):
        out = tmp_path / f"merged_{devices}"
        config = merge_config(tmp_path / f"merge_{devices}.yaml", trained_experts, out)
        run_cli(["merge", "--config", str(config), "--data", str(data), "--trainer.devices", str(devices),
                 "--trainer.strategy", "ddp" if devices > 1 else "auto"], cwd=tmp_path)
        reports[devices] = json.loads((out / "report.json").read_text())
        cards[devices] = json.loads((out / "merge_card.json").read_text())
    assert cards[2]["merged_fingerprint"] == cards[1]["merged_fingerprint"]
    assert cards[2]["search"]["candidates"] == cards[1]["search"]["candidates"]
    for task in TASKS:
        assert reports[2]["tasks"][task]["metrics"] == reports[1]["tasks"][task]["metrics"]
        assert reports[2]["tasks"][task]["expert"] == reports[1]["tasks"][task]["expert"]
    assert reports[2]["run"]["world_size"] == 2
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.slow
def test_an_eval_set_smaller_than_the_process_count_does_not_hang(tiny_bert, trained_experts, shared_data_dir,
                                                                   tmp_path):
    # trec's test set is one example: rank 1 sees no trec batch (but sst2 batches). Both ranks must
    # still run the same metric syncs (whether a task is reported depends on the reduced count).
    dm = make_datamodule(tiny_bert, shared_data_dir, tmp_path / "cache")
    model = MergeModule(experts=str(trained_experts), method=NeuroMerging(), tasks=dm.task_specs)
    merged = tmp_path / "merged"
    quiet_trainer().merge(model, datamodule=None, evaluate=False, output_dir=str(merged))
    trec = resolve_task("trec").to_dict()
    trec["max_examples"] = {"test": 1}
    sst2 = resolve_task("sst2").to_dict()
    sst2["max_examples"] = {"test": EVAL_EXAMPLES}
    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump({
        "class_path": "neuroflow.data.MultiTaskDataModule",
        "init_args": {"tasks": [trec, sst2], "data_dir": shared_data_dir, "tokenizer": tiny_bert,
                      "max_length": 32, "eval_batch_size": 8, "cache_dir": str(tmp_path / "cache")},
    }))
    out = tmp_path / "report"
    run_cli(["test", "--model", "neuroflow.evaluation.MergedModel", "--model.merged_dir", str(merged),
             "--model.report_dir", str(out), "--data", str(data), "--trainer.accelerator", "cpu",
             "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.logger", "false",
             "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path / "root")],
            cwd=tmp_path)
    report = json.loads((out / "report.json").read_text())
    assert sorted(report["tasks"]) == sorted(TASKS)
    assert report["tasks"]["trec"]["metrics"]["accuracy"] in (0.0, 1.0)
    assert report["run"]["world_size"] == 2
