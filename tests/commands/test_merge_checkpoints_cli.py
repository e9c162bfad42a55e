"""`python -m neuroflow merge` on checkpoints made elsewhere: the one-line CLI of issue 10."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from neuroflow.commands.entry import main
from neuroflow.merging import TIES, TaskArithmetic, merge_state_dicts


@pytest.fixture(scope="module")
def llama_checkpoints(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("ckpts")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    base = LlamaForCausalLM(config)
    base.save_pretrained(root / "base")
    states = {"base": {k: v.clone() for k, v in base.state_dict().items()}}
    for i in range(2):
        torch.manual_seed(i + 1)
        expert = LlamaForCausalLM(config)
        expert.load_state_dict(states["base"])
        with torch.no_grad():
            for p in expert.parameters():
                p.add_(0.01 * torch.randn_like(p))
        # sharded on purpose: the reader must follow the index
        expert.save_pretrained(root / f"e{i}", max_shard_size="100KB")
        states[f"e{i}"] = {k: v.clone() for k, v in expert.state_dict().items()}
    return root, states


def _merged(out):
    index = out / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    merged = {}
    for f in files:
        merged.update(load_file(str(out / f)))
    return merged


def test_one_line_cli_equals_in_memory_merge(llama_checkpoints, tmp_path):
    root, states = llama_checkpoints
    out = tmp_path / "out"
    main(["merge", "--model.base", str(root / "base"), "--model.experts", f"[{root / 'e0'}, {root / 'e1'}]",
          "--model.method", "neuroflow.merging.TIES", "--model.method.init_args.mask_rate", "0.8",
          "--evaluate", "false", "--output_dir", str(out), "--max_shard_size", "200KB"])
    merged = _merged(out)
    # tied/untied lm_head: compare the tensors the folder holds with the in-memory merge
    base = {k: v for k, v in states["base"].items()}
    expected = merge_state_dicts(base, [states["e0"], states["e1"]], TIES(mask_rate=0.8))
    assert set(merged) <= set(expected)
    for name, tensor in merged.items():
        assert torch.equal(tensor, expected[name]), name
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert torch.equal(loaded.state_dict()["model.layers.0.self_attn.q_proj.weight"],
                       expected["model.layers.0.self_attn.q_proj.weight"])
    card = (out / "README.md").read_text()
    assert "base_model" in card and "neuroflow" in card and "ties" in card.lower()


def test_bfloat16_output_and_yaml_config(llama_checkpoints, tmp_path):
    root, states = llama_checkpoints
    out = tmp_path / "out"
    config = tmp_path / "merge.yaml"
    config.write_text(
        f"# python -m neuroflow merge --config {config}\n"
        f"model:\n  base: {root / 'base'}\n  experts: [{root / 'e0'}, {root / 'e1'}]\n"
        "  method:\n    class_path: neuroflow.merging.TaskArithmetic\n    init_args: {scaling: 0.5}\n"
        f"evaluate: false\noutput_dir: {out}\ndtype: bfloat16\n")
    main(["merge", "--config", str(config)])
    merged = _merged(out)
    expected = merge_state_dicts(states["base"], [states["e0"], states["e1"]], TaskArithmetic(scaling=0.5))
    for name, tensor in merged.items():
        assert tensor.dtype == torch.bfloat16
        assert torch.equal(tensor, expected[name].to(torch.bfloat16)), name


def test_external_experts_need_a_base(llama_checkpoints, tmp_path, capsys):
    root, _ = llama_checkpoints
    with pytest.raises((SystemExit, ValueError)):
        main(["merge", "--model.experts", f"[{root / 'e0'}]", "--model.method", "neuroflow.merging.TIES",
              "--evaluate", "false", "--output_dir", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_from_mergekit(llama_checkpoints, tmp_path):
    root, states = llama_checkpoints
    cfg = tmp_path / "mk.yml"
    cfg.write_text(f"merge_method: task_arithmetic\nbase_model: {root / 'base'}\nmodels:\n"
                   f"  - model: {root / 'e0'}\n    parameters: {{weight: 0.5}}\n"
                   f"  - model: {root / 'e1'}\n    parameters: {{weight: 0.5}}\ndtype: float32\n")
    out = tmp_path / "out"
    main(["merge", "--from_mergekit", str(cfg), "--output_dir", str(out)])
    merged = _merged(out)
    expected = merge_state_dicts(states["base"], [states["e0"], states["e1"]], TaskArithmetic(scaling=0.5))
    name = "model.layers.1.mlp.down_proj.weight"
    assert torch.allclose(merged[name], expected[name], atol=1e-6)
