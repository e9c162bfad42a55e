"""Statistics files: round trip through `ManifestExperts.statistics`, refusal of foreign statistics."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModel

from neuroflow.experts import ExpertSet, ManifestExperts
from neuroflow.merging import FisherMerging, MergeInputError, RegMean, merge_state_dicts, routing_from_module
from neuroflow.statistics import StatisticsFile, StatisticsMismatchError, compute_statistics


def source_of(experts) -> tuple[ManifestExperts, dict, dict]:
    expert_set = ExpertSet(experts, ["trec", "sst2"])  # expert 0 is trec, 1 is sst2
    model = AutoModel.from_pretrained(expert_set.base_model)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    return ManifestExperts(expert_set, base), base, routing_from_module(model)


def rewrite_header(path, **changes) -> None:
    """Rewrite a statistics file with some header fields changed (the tensors kept)."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
    save_file(load_file(str(path)), str(path), metadata={**metadata, **changes})


def test_round_trip_through_the_file_and_manifest_experts(experts, data_config):
    records = compute_statistics(experts, data_config, kinds=["regmean", "fisher"], max_batches=1, accelerator="cpu")
    source, base, _ = source_of(experts)
    assert source.tasks == ["trec", "sst2"]
    for i, task in enumerate(source.tasks):
        for kind in ("regmean", "fisher"):
            (record,) = [r for r in records if r.task == task and r.kind == kind]
            lazy = source.statistics(i, kind)
            assert isinstance(lazy, StatisticsFile)  # read tensor by tensor, shapes from the header
            on_disk = load_file(str(record.path))
            assert set(lazy) == set(on_disk) and len(lazy) == record.tensors
            for name in list(on_disk)[:5]:
                assert lazy.meta(name) == (tuple(on_disk[name].shape), torch.float32)
                assert torch.equal(lazy[name], on_disk[name])
            assert lazy.field("tasks") == [task] and lazy.field("examples") == record.examples
    grams = source.statistics(0, "regmean")
    name = "encoder.layer.1.output.dense.weight"
    fan_in = base[name].shape[1]
    assert grams.meta(name)[0] == (fan_in, fan_in)
    fishers = source.statistics(0, "fisher")
    assert all(fishers.meta(k)[0] == tuple(base[k].shape) for k in fishers)
    assert source.statistics(0, "no_such_kind") is None


def test_without_statistics_the_methods_name_the_expert_and_the_command(experts):
    source, base, routing = source_of(experts)
    assert source.statistics(0, "regmean") is None
    for method in (RegMean(), FisherMerging()):
        with pytest.raises(MergeInputError, match=r"expert 'trec' .* has none; .*`python -m neuroflow stats"):
            merge_state_dicts(base, source, method, routing=routing)


def test_statistics_of_another_base_are_refused(experts, data_config):
    (record,) = compute_statistics(experts, data_config, kinds=["fisher"], max_batches=1, tasks=["trec"],
                                   accelerator="cpu")
    rewrite_header(record.path, base_fingerprint="sha256:" + "0" * 64, base_model="some/other-model")
    source, base, routing = source_of(experts)
    with pytest.raises(StatisticsMismatchError, match=r"another base model \('some/other-model'\).*expert 'trec'.*"
                                                      r"python -m neuroflow stats --experts"):
        source.statistics(0, "fisher")
    with pytest.raises(MergeInputError, match="another base model"):  # and so does the merge, before merging
        merge_state_dicts(base, source, FisherMerging(), routing=routing)


def test_statistics_of_another_task_set_are_refused(experts, data_config):
    (record,) = compute_statistics(experts, data_config, kinds=["regmean"], max_batches=1, tasks=["trec"],
                                   accelerator="cpu")
    # trec's statistics copied next to the sst2 expert (same base, other task)
    shutil.copytree(record.path.parent, experts / "sst2" / "statistics")
    source, _, _ = source_of(experts)
    with pytest.raises(StatisticsMismatchError,
                       match=r"another task set: tasks \['trec'\], but expert 'sst2' has \['sst2'\]"):
        source.statistics(1, "regmean")


def test_stale_wrong_kind_and_foreign_files_are_refused(experts, data_config):
    (record,) = compute_statistics(experts, data_config, kinds=["regmean"], max_batches=1, tasks=["trec"],
                                   accelerator="cpu")
    source, _, _ = source_of(experts)
    created = StatisticsFile(record.path).metadata["expert_created_at"]
    rewrite_header(record.path, expert_created_at="2000-01-01T00:00:00+00:00")
    with pytest.raises(StatisticsMismatchError, match="earlier version of this expert"):
        source.statistics(0, "regmean")
    rewrite_header(record.path, expert_created_at=created)
    shutil.move(record.path, record.path.with_name("fisher.safetensors"))  # Grams under the Fisher's name
    with pytest.raises(StatisticsMismatchError, match="another kind"):
        source.statistics(0, "fisher")
    save_file({"x": torch.zeros(2)}, str(record.path))  # a safetensors file, but not ours
    with pytest.raises(StatisticsMismatchError, match="not a neuroflow statistics file"):
        source.statistics(0, "regmean")
    record.path.write_bytes(b"garbage")
    with pytest.raises(StatisticsMismatchError, match="cannot read the statistics file"):
        source.statistics(0, "regmean")


def test_refitting_an_expert_removes_its_statistics(experts, data_config, tiny_bert, shared_data_dir, stats_cache):
    from neuroflow.experts import save_expert
    from neuroflow.models import MultiTaskModule
    from stats_helpers import data_args

    compute_statistics(experts, data_config, kinds=["regmean"], max_batches=1, tasks=["trec"], accelerator="cpu")
    assert (experts / "trec" / "statistics" / "regmean.safetensors").is_file()
    from neuroflow.data import MultiTaskDataModule

    dm = MultiTaskDataModule(**{**data_args(tiny_bert, shared_data_dir, stats_cache), "tasks": ["trec"]})
    module = MultiTaskModule(backbone=tiny_bert, tasks=dm.task_specs)
    entry = json.loads((experts / "trec" / "expert.json").read_text())
    save_expert(experts, module, module.backbone_state_dict(), entry["base_fingerprint"])
    assert not (experts / "trec" / "statistics").exists()
