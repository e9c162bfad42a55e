"""`fit` of one expert on 2 CPU processes (plain DDP, gloo): rank 0 alone writes one complete expert.

(A multi-task fit needs `ddp_find_unused_parameters_true`: the other tasks' heads get no gradient
from a single-task batch.)"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from neuroflow.experts import load_manifest, load_task_vector
from neuroflow.models import MultiTaskModule

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_ddp_fit_writes_one_expert(tiny_bert, shared_data_dir, data_cache_dir, tmp_path):
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": 2, "strategy": "ddp", "max_epochs": 2, "enable_progress_bar": False,
            "num_sanity_val_steps": 0, "logger": False, "default_root_dir": str(tmp_path),
            "callbacks": [
                {"class_path": "neuroflow.callbacks.ExpertCollector",
                 "init_args": {"experts_dir": str(tmp_path / "experts")}},
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                 "init_args": {"dirpath": str(tmp_path / "ckpt"), "monitor": "val/avg/score", "mode": "max"}},
            ],
        },
        "model": {"class_path": "neuroflow.models.MultiTaskModule", "init_args": {"backbone": tiny_bert}},
        "data": {"class_path": "neuroflow.data.MultiTaskDataModule",
                 "init_args": {"tasks": ["trec"], "tokenizer": tiny_bert, "data_dir": shared_data_dir,
                               "cache_dir": data_cache_dir, "max_length": 32, "batch_size": 8,
                               "max_train_examples": 64, "max_eval_examples": 41}},
    }
    path = tmp_path / "fit.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "neuroflow", "fit", "--config", str(path)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]

    [entry] = load_manifest(tmp_path / "experts")
    assert sorted(p.name for p in (tmp_path / "experts").iterdir()) == [".manifest.lock", "manifest.json", "trec"]
    assert json.loads((tmp_path / "experts" / "manifest.json").read_text())["experts"] == [entry]
    base = MultiTaskModule(tiny_bert, tasks=[entry["task_spec"]]).backbone_state_dict()
    best = torch.load(entry["checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    tv = load_task_vector(tmp_path / "experts", entry, base)
    for key, delta in tv.items():
        torch.testing.assert_close(base[key] + delta, best[f"backbone.{key}"], rtol=1e-5, atol=1e-6)
