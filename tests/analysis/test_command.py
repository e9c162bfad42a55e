"""`python -m neuroflow analyze` end to end on two tiny BERT experts (see conftest.py)."""

import json

import pytest
import torch
from transformers import AutoModel

from neuroflow.analysis import analysis_section, analyze_experts, analyze_task_vectors
from neuroflow.analysis.command import main
from neuroflow.experts import ExpertInputError, load_manifest, load_task_vector
from neuroflow.merging import routing_from_module

LAYERS = ["embeddings", "encoder.layer.0", "encoder.layer.1", "other"]


@pytest.fixture(scope="module")
def result(tiny_experts, tmp_path_factory):
    out = tmp_path_factory.mktemp("analysis_out")
    return main([str(tiny_experts), "--out", str(out), "--quiet"]), out


def test_writes_json_markdown_and_png(result):
    analysis, out = result
    assert set(analysis["files"]) == {"json", "md", "png"}
    saved = json.loads((out / "analysis.json").read_text())
    assert saved == {k: v for k, v in analysis.items() if k != "files"}
    assert (out / "analysis.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (out / "analysis.md").read_text()
    assert markdown.startswith("# Expert analysis") and "![analysis](analysis.png)" in markdown


def test_layers_tasks_and_the_known_conflict(result):
    analysis, _ = result
    assert analysis["tasks"] == ["alpha", "beta"] and analysis["format"] == "neuroflow.analysis/1"
    assert [e["layer"] for e in analysis["layers"]] == LAYERS
    layer1 = analysis["layers"][2]
    # beta's layer-1 update is -2x alpha's: every entry both keep conflicts, alpha always loses.
    assert layer1["conflict_rate"] == 1.0 and layer1["pairwise_conflict"][0][1] == 1.0
    assert layer1["election_loss"] == {"alpha": 1.0, "beta": 0.0}
    assert layer1["cosine"][0][1] == pytest.approx(-1.0)
    others = [e["conflict_rate"] for e in analysis["layers"] if e["layer"] not in ("encoder.layer.1", "other")]
    assert max(others) < 0.7
    # The pooler (`other`; frozen while fitting, unchanged) has no update: its numbers are undefined.
    assert analysis["layers"][3]["conflict_rate"] is None
    pooler = [t for t in analysis["tensors"] if t["name"] == "pooler.dense.weight"][0]
    assert pooler["parallel_fraction"] == {"alpha": None, "beta": None}
    assert analysis["source"]["experts"][0]["task"] == "alpha"


def test_summary_names_the_losing_task_and_the_layer(result):
    analysis, _ = result
    section = analysis_section(analysis)
    assert section.startswith("## Neuron-subspace analysis")
    assert "They sit in enc.1" in section
    assert "**Sign election:** `alpha` loses" in section
    assert "| alpha |" in section and "| encoder.layer.1 |" in section


def test_same_numbers_as_in_memory_task_vectors_with_module_routing(tiny_experts, tiny_bert, result):
    analysis, _ = result
    model = AutoModel.from_pretrained(tiny_bert)
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    entries = {e["task"]: e for e in load_manifest(tiny_experts)}
    experts = [{k: base[k] + v for k, v in load_task_vector(tiny_experts, entries[t], base).items()}
               for t in ("alpha", "beta")]
    direct = analyze_task_vectors(base, experts, tasks=["alpha", "beta"], routing=routing_from_module(model))
    assert direct["model"]["parallel_fraction"] == pytest.approx(analysis["model"]["parallel_fraction"], rel=1e-4)
    assert direct["model"]["counts"] == analysis["model"]["counts"]
    assert direct["trim"]["k"] == analysis["trim"]["k"]


def test_task_subset_single_task_and_exclude(tiny_experts, tmp_path):
    single = main([str(tiny_experts), "--tasks", "beta", "--out", str(tmp_path), "--quiet",
                   "--exclude", "embeddings.*", "--mask_rate", "0.5"])
    assert single["tasks"] == ["beta"] and single["mask_rate"] == 0.5
    assert [e["layer"] for e in single["layers"]] == LAYERS[1:]
    assert single["model"]["conflict_rate"] is None
    assert (tmp_path / "analysis.png").is_file()
    assert "## Neuron-subspace analysis" in analysis_section(single)


def test_expert_folders_and_bad_input(tiny_experts):
    folders = [str(tiny_experts / "beta"), str(tiny_experts / "alpha")]
    assert analyze_experts(folders)["tasks"] == ["beta", "alpha"]
    with pytest.raises(ExpertInputError, match="no expert for task"):
        main([str(tiny_experts), "--tasks", "gamma", "--quiet"])


def test_lora_experts_are_analysed_as_dense_task_vectors(tiny_bert, tmp_path):
    from neuroflow.data import TaskSpec
    from neuroflow.experts import fingerprint_state_dict, save_expert
    from neuroflow.models import MultiTaskModule

    for i, task in enumerate(["left", "right"]):
        torch.manual_seed(0)  # the same random lora_A in both experts
        spec = TaskSpec(name=task, kind="text_classification", source={"path": "csv"}, label_names=["no", "yes"],
                        text_column="text")
        module = MultiTaskModule(tiny_bert, tasks=[spec], lora={"r": 2, "target_modules": ["query"]})
        base = {k: v.clone() for k, v in module.backbone_state_dict().items()}
        with torch.no_grad():
            for name, param in module.backbone.named_parameters():
                if "lora_B" in name:
                    param.fill_(0.1 if i == 0 else -0.1)  # B A = +/- the same matrix: opposite updates
        save_expert(tmp_path, module, base, fingerprint_state_dict(base))
    analysis = analyze_experts(tmp_path, mask_rate=0.0)
    queries = [t for t in analysis["tensors"] if t["name"].endswith("attention.self.query.weight")]
    assert queries and all(t["conflict_rate"] == 1.0 for t in queries)
    untouched = [t for t in analysis["tensors"] if t["name"].endswith("attention.self.key.weight")]
    assert all(t["norm"] == {"left": 0.0, "right": 0.0} for t in untouched)
    assert analysis["model"]["cosine"][0][1] == pytest.approx(-1.0)
