"""Encoder-decoder (T5) text2text experts: Grams per stream (encoder / decoder positions), sampled Fishers."""

from __future__ import annotations

from itertools import islice

import pytest
import torch

from neuroflow.callbacks.expert_collector import ExpertCollector
from neuroflow.commands.trainer import NeuroTrainer
from neuroflow.data import MultiTaskDataModule
from neuroflow.data.task_spec import TaskSpec
from neuroflow.experts import ExpertSet
from neuroflow.models import MultiTaskModule
from neuroflow.models.optim import AdamW
from neuroflow.statistics import StatisticsFile, compute_statistics
from neuroflow.statistics.accumulators import stream_of


@pytest.fixture(scope="module")
def t5_setup(tiny_t5, shared_data_dir, tmp_path_factory):
    experts = tmp_path_factory.mktemp("t5_experts")
    data = dict(tasks=["trec"], data_dir=shared_data_dir, tokenizer=tiny_t5, max_length=24, batch_size=4,
                eval_batch_size=16, max_train_examples=16, max_eval_examples=8, as_text2text=True,
                cache_dir=str(tmp_path_factory.mktemp("t5_cache")))
    torch.manual_seed(0)
    dm = MultiTaskDataModule(**data)
    module = MultiTaskModule(backbone=tiny_t5, tasks=dm.task_specs, optimizer=lambda p: AdamW(p, lr=1e-3),
                             lr_scheduler=None)
    NeuroTrainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                 enable_checkpointing=False, max_steps=2, num_sanity_val_steps=0, limit_val_batches=1,
                 callbacks=[ExpertCollector(str(experts), monitor=None)]).fit(module, datamodule=dm)
    return experts, data


def test_stream_of_routes_decoder_layers_and_cross_attention_keys():
    assert stream_of("encoder.block.0.layer.0.SelfAttention.q") == "encoder"
    assert stream_of("decoder.block.0.layer.0.SelfAttention.q") == "decoder"
    assert stream_of("decoder.block.0.layer.1.EncDecAttention.q") == "decoder"
    assert stream_of("decoder.block.0.layer.1.EncDecAttention.k") == "encoder"
    assert stream_of("lm_head") == "decoder"
    assert stream_of("model.decoder.layers.0.encoder_attn.k_proj") == "encoder"  # BART
    assert stream_of("model.decoder.layers.0.fc1") == "decoder"
    assert stream_of("model.encoder.layers.0.fc1") == "encoder"


def test_t5_grams_count_real_positions_of_each_stream_and_fishers_are_finite(t5_setup):
    experts, data = t5_setup
    records = compute_statistics(experts, data, kinds=["regmean", "fisher"], max_batches=2, accelerator="cpu")
    grams = StatisticsFile(next(r.path for r in records if r.kind == "regmean"))
    expert = ExpertSet(experts)["trec"]
    spec = TaskSpec.from_dict(dict(expert.task_specs["trec"]))
    batches = list(islice(iter(MultiTaskDataModule(**{**data, "tasks": [spec]}).train_dataloader()), 2))
    encoder_rows = sum(int(b["attention_mask"].sum()) for b in batches)
    decoder_rows = sum(int((b["labels"] != -100).sum()) for b in batches)
    assert encoder_rows != decoder_rows
    assert grams.rows("encoder.block.0.layer.0.SelfAttention.q.weight") == encoder_rows
    assert grams.rows("decoder.block.0.layer.0.SelfAttention.q.weight") == decoder_rows
    assert grams.rows("decoder.block.0.layer.1.EncDecAttention.q.weight") == decoder_rows
    assert grams.rows("decoder.block.0.layer.1.EncDecAttention.k.weight") == encoder_rows
    assert "lm_head.weight" not in grams  # tied to the shared embedding: no Gram under another module's name
    fishers = StatisticsFile(next(r.path for r in records if r.kind == "fisher"))
    assert fishers.field("examples") == 8 and fishers.field("fisher_labels") == "sample"
    values = [fishers[k] for k in fishers]
    assert all(bool(torch.isfinite(v).all()) and bool((v >= 0).all()) for v in values)
    assert float(fishers["decoder.block.0.layer.1.EncDecAttention.k.weight"].sum()) > 0
    assert float(fishers["shared.weight"].sum()) > 0
