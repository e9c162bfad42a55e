"""`DecoderFSDPStrategy` and `configs/trainer/fsdp.yaml`: the strategy config resolves, decoder
layers are found by class name (or the model's `_no_split_modules`), and (slow) a real 2-process
FSDP fit on CPU/gloo writes experts equal to its full-state-dict checkpoints."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from jsonargparse import ArgumentParser
from lightning.pytorch.strategies import Strategy
from transformers import AutoModelForCausalLM

from neuroflow.commands.trainer import NeuroTrainer
from neuroflow.experts import load_manifest, load_task_vector
from neuroflow.models import MultiTaskModule
from neuroflow.models.fsdp import DecoderFSDPStrategy, layer_classes, no_split_module_names

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def test_fsdp_config_resolves_to_the_strategy():
    config = yaml.safe_load((REPO / "configs/trainer/fsdp.yaml").read_text())
    parser = ArgumentParser()
    parser.add_argument("--strategy", type=str | Strategy)
    strategy = parser.instantiate_classes(parser.parse_object({"strategy": config["strategy"]})).strategy
    assert isinstance(strategy, DecoderFSDPStrategy)
    assert strategy.wrap_layers is None and strategy._state_dict_type == "full" and strategy.kwargs["use_orig_params"]
    assert config["callbacks"][0]["class_path"] == "neuroflow.callbacks.ExpertCollector"
    # Lightning refuses its own FSDPStrategy without a GPU; this one runs on CPU (gloo) for tests.
    trainer = NeuroTrainer(accelerator="cpu", devices=1, strategy=strategy, logger=False)
    assert trainer.strategy is strategy


@pytest.mark.parametrize("arch, layer", [("llama", "LlamaDecoderLayer"), ("mistral", "MistralDecoderLayer"),
                                         ("qwen2", "Qwen2DecoderLayer"), ("gpt2", "GPT2Block")])
def test_decoder_layers_found_by_name(arch, layer, causal_models):
    model = AutoModelForCausalLM.from_pretrained(causal_models[arch])
    assert layer in no_split_module_names(model)
    assert {c.__name__ for c in layer_classes(model, None)} == {layer}
    assert {c.__name__ for c in layer_classes(model, [layer])} == {layer}
    module = MultiTaskModule(causal_models[arch], tasks=[{"name": "t", "kind": "generation", "source": {"path": "json"},
                                                          "prompt_template": "{q}", "target_column": "a"}],
                             lora={"r": 2})
    assert {c.__name__ for c in layer_classes(module, None)} == {layer}  # found under peft's wrappers too
    with pytest.raises(ValueError, match=rf"no module of class \['LlamaDecoderLayr'\].*{layer}"):
        layer_classes(model, ["LlamaDecoderLayr"])


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["full", "lora"])
def test_two_process_fsdp_fit_writes_the_checkpointed_expert(mode, tiny_llama, shared_data_dir, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(HERE / "causal_script.py"), "fsdp-fit", tiny_llama, shared_data_dir,
                           str(tmp_path / "cache"), str(tmp_path), mode], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    [entry] = load_manifest(tmp_path / "experts")
    assert entry["backbone"]["format"] == ("lora" if mode == "lora" else "task_vector")
    best = torch.load(entry["checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    module = MultiTaskModule(tiny_llama, tasks=[entry["task_spec"]], lora={"r": 4, "lora_alpha": 8} if mode == "lora" else None)
    base = {k: v.clone() for k, v in module.backbone_state_dict().items()}
    module.load_state_dict(best)  # the gathered full state dict has the unwrapped module's keys
    expected = module.backbone.merge_and_unload().state_dict() if mode == "lora" else module.backbone_state_dict()
    tv = load_task_vector(tmp_path / "experts", entry, base)
    assert sum(float(v.abs().sum()) for v in tv.values()) > 0
    for key, delta in tv.items():
        torch.testing.assert_close(base[key] + delta, expected[key], rtol=1e-5, atol=1e-6)
