"""The statistics pass against direct computations: Grams of captured inputs, hand-computed Fishers."""

from __future__ import annotations

import zlib

import pytest
import torch
from stats_helpers import BATCH, HandExpert, data_args
from safetensors.torch import load_file

from neuroflow.statistics import StatisticsFile, compute_statistics

LAYER = "encoder.layer.0.attention.self.query"


def test_gram_of_a_linear_layer_is_xtx_of_its_unpadded_inputs(experts, data_config, tiny_bert, shared_data_dir,
                                                               stats_cache):
    records = compute_statistics(experts, data_config, kinds=["regmean"], max_batches=3, tasks=["trec"],
                                 accelerator="cpu")
    assert [(r.task, r.kind, r.batches, r.examples) for r in records] == [("trec", "regmean", 3, 3 * BATCH)]
    hand = HandExpert(experts, "trec", data_args(tiny_bert, shared_data_dir, stats_cache))
    batches = hand.batches(3)
    inputs = hand.inputs_of(LAYER, batches)
    masks = [b["attention_mask"].bool() for b in batches]
    assert any(not bool(m.all()) for m in masks), "the batches should hold padding"
    rows = torch.cat([x[m] for x, m in zip(inputs, masks)]).double()

    saved = StatisticsFile(records[0].path)
    gram = saved[f"{LAYER}.weight"]
    assert gram.dtype == torch.float32 and gram.shape == (32, 32)
    torch.testing.assert_close(gram.double(), rows.T @ rows, rtol=1e-5, atol=1e-4)
    assert saved.rows(f"{LAYER}.weight") == rows.shape[0] == sum(int(m.sum()) for m in masks)
    # the pooler reads one row per example (the first token), not the sequence
    pooled = torch.cat(hand.inputs_of("pooler.dense", batches)).double()
    torch.testing.assert_close(saved["pooler.dense.weight"].double(), pooled.T @ pooled, rtol=1e-5, atol=1e-4)
    assert saved.rows("pooler.dense.weight") == 3 * BATCH
    # every Linear of the backbone, and nothing else (embeddings and norms have no Gram)
    linears = {f"{n}.weight" for n, m in hand.model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert set(saved) == linears


@pytest.mark.parametrize("labels", ["expected", "sample"])
def test_fisher_is_the_mean_squared_per_example_gradient(labels, experts, data_config, tiny_bert, shared_data_dir,
                                                         stats_cache):
    records = compute_statistics(experts, data_config, kinds=["fisher"], max_batches=1, tasks=["sst2"],
                                 fisher_labels=labels, seed=3, accelerator="cpu")
    saved = load_file(str(records[0].path))
    hand = HandExpert(experts, "sst2", data_args(tiny_bert, shared_data_dir, stats_cache))
    generator = torch.Generator().manual_seed(3 + zlib.crc32(b"sst2"))
    expected = hand.fisher(hand.batches(1), labels, generator)
    assert set(saved) == {k for k in hand.base if hand.base[k].is_floating_point() and k in expected}
    for name, value in expected.items():
        torch.testing.assert_close(saved[name].double(), value.double(), rtol=1e-4, atol=1e-9, msg=name)
    assert float(saved["encoder.layer.1.output.dense.weight"].sum()) > 0
    assert float(saved["pooler.dense.weight"].abs().sum()) == 0  # no gradient reaches an unused pooler
    meta = StatisticsFile(records[0].path)
    assert meta.field("fisher_labels") == labels and meta.field("examples") == BATCH


def test_both_kinds_in_one_pass_and_the_header(experts, data_config):
    import neuroflow

    records = compute_statistics(experts, data_config, kinds=["regmean", "fisher"], max_batches=2, accelerator="cpu")
    assert [(r.task, r.kind) for r in records] == [(t, k) for t in ("trec", "sst2") for k in ("regmean", "fisher")]
    for record in records:
        assert record.path == experts / record.task / "statistics" / f"{record.kind}.safetensors"
        assert record.bytes == record.path.stat().st_size and record.seconds > 0
        saved = StatisticsFile(record.path)
        entry = saved.metadata
        assert entry["kind"] == record.kind and saved.field("tasks") == [record.task]
        assert entry["base_fingerprint"].startswith("sha256:")
        assert saved.field("max_batches") == 2 and saved.field("batches") == 2
        assert saved.field("examples") == 2 * BATCH
        assert entry["neuroflow_version"] == neuroflow.__version__
    assert not list(experts.glob("*/statistics/.*.tmp"))  # atomic writes leave no temporary file


def test_max_batches_none_is_one_pass_over_the_capped_split(experts, data_config):
    (record,) = compute_statistics(experts, data_config, kinds=["regmean"], max_batches=None, tasks=["trec"],
                                   accelerator="cpu")
    saved = StatisticsFile(record.path)
    assert record.examples == saved.field("train_examples") == 48  # max_train_examples of the data config


def test_lora_expert_statistics_are_those_of_its_dense_function(tiny_bert, shared_data_dir, stats_cache, tmp_path):
    from neuroflow.callbacks.expert_collector import ExpertCollector
    from neuroflow.commands.trainer import NeuroTrainer
    from neuroflow.data import MultiTaskDataModule
    from neuroflow.models import MultiTaskModule
    from neuroflow.models.optim import AdamW

    experts = tmp_path / "lora_experts"
    data = {**data_args(tiny_bert, shared_data_dir, stats_cache), "tasks": ["trec"]}
    torch.manual_seed(0)
    dm = MultiTaskDataModule(**data)
    module = MultiTaskModule(backbone=tiny_bert, tasks=dm.task_specs, optimizer=lambda p: AdamW(p, lr=5e-2),
                             lr_scheduler=None, lora={"r": 4, "lora_alpha": 8, "target_modules": ["query", "value"]})
    NeuroTrainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                 enable_checkpointing=False, max_steps=3, num_sanity_val_steps=0, limit_val_batches=1,
                 callbacks=[ExpertCollector(str(experts), monitor=None)]).fit(module, datamodule=dm)
    records = compute_statistics(experts, data, kinds=["regmean", "fisher"], max_batches=1, accelerator="cpu")
    hand = HandExpert(experts, "trec", data)
    assert not torch.equal(hand.model.state_dict()[f"{LAYER}.weight"], hand.base[f"{LAYER}.weight"])
    batches = hand.batches(1)
    # layer 1's inputs depend on layer 0's adapters: its Gram is of the dense expert (base + B A s)
    name = "encoder.layer.1.attention.self.query"
    x = hand.inputs_of(name, batches)[0][batches[0]["attention_mask"].bool()].double()
    grams = StatisticsFile(next(r.path for r in records if r.kind == "regmean"))
    torch.testing.assert_close(grams[f"{name}.weight"].double(), x.T @ x, rtol=1e-5, atol=1e-4)
    fishers = StatisticsFile(next(r.path for r in records if r.kind == "fisher"))
    # every backbone parameter under its plain name (not only the adapters', and no peft names)
    assert set(fishers) == {k for k, v in hand.base.items() if v.is_floating_point()}
