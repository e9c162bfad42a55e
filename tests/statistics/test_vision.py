"""Vision (ViT) experts: every patch token is a Gram row (no padding), Fishers of every parameter."""

from __future__ import annotations

import torch

from neuroflow.callbacks.expert_collector import ExpertCollector
from neuroflow.commands.trainer import NeuroTrainer
from neuroflow.data import MultiTaskDataModule
from neuroflow.models import MultiTaskModule
from neuroflow.models.optim import AdamW
from neuroflow.statistics import StatisticsFile, compute_statistics


def test_vit_expert_grams_count_every_token_and_fishers_cover_the_backbone(tiny_vit, shared_data_dir, tmp_path):
    experts = tmp_path / "experts"
    data = dict(tasks=["sklearn_digits"], data_dir=shared_data_dir, batch_size=8, eval_batch_size=16,
                max_train_examples=16, max_eval_examples=8, cache_dir=str(tmp_path / "cache"))
    torch.manual_seed(0)
    dm = MultiTaskDataModule(**data)
    module = MultiTaskModule(backbone=tiny_vit, tasks=dm.task_specs, optimizer=lambda p: AdamW(p, lr=1e-3),
                             lr_scheduler=None)
    NeuroTrainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                 enable_checkpointing=False, max_steps=2, num_sanity_val_steps=0, limit_val_batches=1,
                 callbacks=[ExpertCollector(str(experts), monitor=None)]).fit(module, datamodule=dm)
    records = compute_statistics(experts, data, kinds=["regmean", "fisher"], max_batches=1, accelerator="cpu")
    grams = StatisticsFile(next(r.path for r in records if r.kind == "regmean"))
    tokens = (32 // 8) ** 2 + 1  # 4 x 4 patches + the CLS token, per image
    rows = grams.field("rows")
    assert rows.pop("pooler.dense.weight") == 8  # the pooler reads the CLS token only
    assert len(rows) == 12 and set(rows.values()) == {8 * tokens}  # 2 layers x (q, k, v, o, fc1, fc2)
    fishers = StatisticsFile(next(r.path for r in records if r.kind == "fisher"))
    assert fishers.field("examples") == 8
    (patches,) = [k for k in fishers if "patch" in k and k.endswith("weight")]  # a Conv2d: a Fisher, no Gram
    assert float(fishers[patches].sum()) > 0 and patches not in grams
