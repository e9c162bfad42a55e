"""End to end: `stats`, then RegMean / Fisher merging through the engine and through `python -m neuroflow merge`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel

from neuroflow.commands.cli import main as cli_main
from neuroflow.experts import ExpertSet, Merger
from neuroflow.merging import FisherMerging, RegMean, merge_state_dicts, routing_from_module
from neuroflow.merging.fisher import fisher_average
from neuroflow.merging.regmean import regmean_solve
from neuroflow.statistics import compute_statistics
from neuroflow.statistics.command import main as stats_main

ROOT = Path(__file__).resolve().parents[2]
LINEAR = "encoder.layer.1.attention.output.dense.weight"


def merger_of(experts: Path) -> Merger:
    expert_set = ExpertSet(experts, ["trec", "sst2"])
    model = AutoModel.from_pretrained(expert_set.base_model)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    return Merger(expert_set, base, routing=routing_from_module(model))


def test_stats_then_regmean_and_fisher_through_the_engine(experts, data_config):
    records = compute_statistics(experts, data_config, kinds=["regmean", "fisher"], max_batches=2,
                                 accelerator="cpu")
    merger = merger_of(experts)
    base, source = merger.base, merger.source
    tvs = {n: torch.stack([source.get(i, n).double() for i in range(2)]) for n in base if base[n].is_floating_point()}
    stats = {(r.task, r.kind): load_file(str(r.path)) for r in records}

    regmean = merger.merge(RegMean(alpha=0.9))
    grams = torch.stack([stats[(t, "regmean")][LINEAR].double() for t in ("trec", "sst2")])
    expected = base[LINEAR].double() + regmean_solve(tvs[LINEAR], grams, 0.9)
    torch.testing.assert_close(regmean.state_dict[LINEAR].double(), expected, rtol=0, atol=1e-6)
    modules = AutoModel.from_pretrained(merger.experts.base_model).modules()
    linears = sum(isinstance(m, torch.nn.Linear) for m in modules)
    assert regmean.info["statistics"]["regmean_tensors"] == linears == 13  # 2 layers x 6 + pooler
    bias = LINEAR.replace("weight", "bias")  # no Gram: averaged by the default fallback
    torch.testing.assert_close(regmean.state_dict[bias].double(), base[bias].double() + tvs[bias].mean(0),
                               rtol=0, atol=1e-6)

    fisher = merger.merge(FisherMerging())
    assert fisher.info["statistics"]["averaged_tensors"] == 0  # every merged tensor has a Fisher
    for name in (LINEAR, "embeddings.word_embeddings.weight", "encoder.layer.0.output.LayerNorm.weight"):
        fishers = torch.stack([stats[(t, "fisher")][name].double() for t in ("trec", "sst2")])
        expected = base[name].double() + fisher_average(tvs[name], fishers, 1e-8)
        torch.testing.assert_close(fisher.state_dict[name].double(), expected, rtol=0, atol=1e-6, msg=name)
    # the two data-aware merges differ from each other and from plain averaging
    assert not torch.allclose(regmean.state_dict[LINEAR], fisher.state_dict[LINEAR])
    averaged = base[LINEAR].double() + tvs[LINEAR].mean(0)
    assert not torch.allclose(regmean.state_dict[LINEAR].double(), averaged, atol=1e-6)


@pytest.mark.parametrize("method", ["regmean", "fisher"])
def test_stats_command_then_merge_command_with_the_shipped_config(method, experts, data_config, tmp_path, capsys):
    rows = stats_main(["--experts", str(experts), "--data", str(data_config), "--kinds", method,
                       "--max_batches", "2", "--accelerator", "cpu", "--threads", "1", "--summary", str(tmp_path / "stats.json")])
    assert [(r["task"], r["kind"]) for r in rows] == [("trec", method), ("sst2", method)]
    assert json.loads((tmp_path / "stats.json").read_text()) == rows
    assert f"{method}.safetensors" in capsys.readouterr().out

    config = ROOT / "configs" / "merge" / f"{method}.yaml"
    out = tmp_path / "merged"
    cli_main(["merge", "--config", str(config), "--data", str(data_config),
              "--model.init_args.experts", str(experts), "--trainer.accelerator", "cpu",
              "--trainer.default_root_dir", str(tmp_path / "root"), "--output_dir", str(out),
              "--evaluate", "false"])
    card = json.loads((out / "merge_card.json").read_text())
    expected_class = {"regmean": RegMean, "fisher": FisherMerging}[method]
    assert card["method"]["class_path"].endswith(expected_class.__name__)
    # the saved backbone is the engine's merge of the same experts with the same statistics
    saved = AutoModel.from_pretrained(out / "backbone").state_dict()
    merger = merger_of(experts)
    direct = merge_state_dicts(merger.base, merger.source, expected_class(**card["method"]["init_args"]),
                               routing=merger.routing)
    for name in (LINEAR, "embeddings.word_embeddings.weight"):
        torch.testing.assert_close(saved[name], direct[name], rtol=0, atol=2e-6, msg=name)
