"""Tiny BERT experts collected into an experts folder in seconds (a few steps each), for the tests
of the command line and the pipeline that need a real experts folder but not good experts."""

from __future__ import annotations

from pathlib import Path

import torch

CAPS = {"max_train_examples": 32, "max_eval_examples": 16}


def data_config(backbone: str, data_dir: str, cache_dir: str, tasks: list[str]) -> dict:
    """The `data` block of a CLI config for `tasks` on the real data, small and fast."""
    return {"class_path": "neuroflow.data.MultiTaskDataModule",
            "init_args": {"tasks": tasks, "tokenizer": backbone, "data_dir": data_dir, "cache_dir": cache_dir,
                          "max_length": 24, "batch_size": 16, "eval_batch_size": 32, **CAPS}}


def collect_experts(experts_dir: Path, backbones: dict[str, str], data_dir: str, cache_dir: str) -> Path:
    """Fine-tune one expert per task (task -> its backbone folder) for 2 steps, collected into `experts_dir`."""
    from neuroflow.callbacks.expert_collector import ExpertCollector
    from neuroflow.commands.trainer import NeuroTrainer
    from neuroflow.data import MultiTaskDataModule
    from neuroflow.models import MultiTaskModule

    for task, backbone in backbones.items():
        torch.manual_seed(0)
        dm = MultiTaskDataModule([task], data_dir=data_dir, tokenizer=backbone, max_length=24, batch_size=16,
                                 eval_batch_size=32, cache_dir=cache_dir, **CAPS)
        module = MultiTaskModule(backbone=backbone, tasks=dm.task_specs)
        trainer = NeuroTrainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                               enable_model_summary=False, enable_checkpointing=False, max_steps=2,
                               num_sanity_val_steps=0, callbacks=[ExpertCollector(str(experts_dir))])
        trainer.fit(module, datamodule=dm)
    return experts_dir


def merge_config(experts: Path, backbone: str, data_dir: str, cache_dir: str, root: Path,
                 method: str = "neuroflow.merging.TIES") -> dict:
    """A complete `merge` config of `experts` (trec, sst2) writing under `root`."""
    return {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "logger": False, "enable_progress_bar": False,
                    "enable_model_summary": False, "default_root_dir": str(root / "default_root")},
        "model": {"class_path": "neuroflow.evaluation.MergeModule",
                  "init_args": {"experts": str(experts), "method": {"class_path": method}}},
        "data": data_config(backbone, data_dir, cache_dir, ["trec", "sst2"]),
        "output_dir": str(root / "merged"),
        "reference": "manifest",
    }
