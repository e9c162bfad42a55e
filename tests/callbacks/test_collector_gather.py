"""The collector's path for sharding strategies (FSDP, DeepSpeed): the expert is written from the
full state dict gathered on rank 0, not from the (sharded) module. A fake strategy stands in for
FSDP here (one process, tensors gathered as copies that share nothing with the module); the real
2-process FSDP run is `tests/models/test_fsdp.py` (slow)."""

import json
from functools import partial

import pytest
import torch
from lightning.pytorch import Callback, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import SingleDeviceStrategy
from safetensors.torch import load_file

from neuroflow.callbacks import ExpertCollector
from neuroflow.experts import load_expert_head, load_manifest, load_task_vector
from neuroflow.models import AdamW, MultiTaskModule
from neuroflow.models.gathered import GatheredModule, is_sharded_strategy

CHOICE = {"name": "sst2_choice", "kind": "multiple_choice", "label_names": ["negative", "positive"],
          "label_format": "index", "prompt_template": "Review: {text}\nSentiment:",
          "source": {"path": "label_text_lines", "pattern": r"^(?P<label>[01]) (?P<text>.*)$",
                     "data_files": {"train": "sst2/stsa.binary.train", "validation": "sst2/stsa.binary.dev",
                                    "test": "sst2/stsa.binary.test"}},
          "splits": {"train": "train", "validation": "validation", "test": "test"}}


class FSDPStrategy(SingleDeviceStrategy):
    """Counts as sharded by name; hands out copies, as a gathered full state dict would be."""

    _state_dict_type = "full"
    gathered = 0

    def lightning_module_state_dict(self):
        type(self).gathered += 1
        return {k: v.detach().clone() for k, v in self.lightning_module.state_dict().items()}


class GathersAtTrainEnd(Callback):
    """How many gathers checkpointing made before the collector's `on_fit_end`."""

    def on_train_end(self, trainer, pl_module):
        self.before = FSDPStrategy.gathered


def fit(module, dm, make_trainer, tmp_path, checkpoint: bool) -> tuple[int, ModelCheckpoint | None]:
    """Fit with the fake strategy; returns the collector's own gathers and the checkpoint callback."""
    marker = GathersAtTrainEnd()
    callbacks = [marker, ExpertCollector(str(tmp_path / "experts"), monitor="val/avg/score" if checkpoint else None)]
    best = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/avg/score", mode="max") if checkpoint else None
    FSDPStrategy.gathered = 0
    make_trainer(max_epochs=2, strategy=FSDPStrategy(device=torch.device("cpu")), enable_checkpointing=checkpoint,
                 callbacks=[*callbacks, *([best] if best else [])]).fit(module, dm)
    return FSDPStrategy.gathered - marker.before, best


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_expert_from_the_gathered_state(lora, tiny_llama, make_datamodule, make_trainer, tmp_path):
    seed_everything(0)
    dm = make_datamodule([CHOICE], tokenizer=tiny_llama, max_length=48, max_target_length=8, max_train_examples=24,
                         max_eval_examples=8)
    module = MultiTaskModule(tiny_llama, tasks=dm.task_specs, lora={"r": 2, "lora_alpha": 4} if lora else None,
                             optimizer=partial(AdamW, lr=1e-2), lr_scheduler=None)
    base = {k: v.clone() for k, v in module.backbone_state_dict().items()}
    gathers, _ = fit(module, dm, make_trainer, tmp_path, checkpoint=False)
    assert gathers == 1
    [entry] = load_manifest(tmp_path / "experts")
    tv = load_task_vector(tmp_path / "experts", entry, base)
    if lora:
        # The adapter equals what peft itself writes for the unsharded module.
        adapter = tmp_path / "experts" / "sst2_choice" / "adapter"
        module.backbone.save_pretrained(str(tmp_path / "peft"))
        saved, reference = (load_file(str(d / "adapter_model.safetensors")) for d in (adapter, tmp_path / "peft"))
        assert saved.keys() == reference.keys() and len(saved) > 0
        assert all(torch.equal(saved[k], reference[k]) for k in saved)
        config, reference_config = (json.loads((d / "adapter_config.json").read_text()) for d in (adapter, tmp_path / "peft"))
        # peft keeps target_modules as a set: its JSON list order follows the string hash seed.
        for c in (config, reference_config):
            c["target_modules"] = sorted(c["target_modules"])
        assert config == reference_config
    else:
        final = module.backbone_state_dict()
        for key, delta in tv.items():
            torch.testing.assert_close(base[key] + delta, final[key], rtol=1e-5, atol=1e-6)
    assert sum(float(v.abs().sum()) for v in tv.values()) > 0 and load_expert_head(tmp_path / "experts", entry) is None


def test_best_full_state_checkpoint_is_the_expert(tiny_llama, make_datamodule,
                                                                               make_trainer, tmp_path):
    seed_everything(0)
    dm = make_datamodule([CHOICE], tokenizer=tiny_llama, max_length=48, max_target_length=8, max_train_examples=24,
                         max_eval_examples=8)
    module = MultiTaskModule(tiny_llama, tasks=dm.task_specs, optimizer=partial(AdamW, lr=1e-2), lr_scheduler=None)
    base = {k: v.clone() for k, v in module.backbone_state_dict().items()}
    gathers, checkpoint = fit(module, dm, make_trainer, tmp_path, checkpoint=True)
    assert gathers == 0  # the checkpoint file already holds every weight
    [entry] = load_manifest(tmp_path / "experts")
    state = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
    tv = load_task_vector(tmp_path / "experts", entry, base)
    for key, delta in tv.items():
        torch.testing.assert_close(base[key] + delta, state[f"backbone.{key}"], rtol=1e-5, atol=1e-6)


def test_gathered_module_and_sharded_state_refusals(tiny_llama, make_trainer):
    from neuroflow.models.fsdp import DecoderFSDPStrategy

    module = MultiTaskModule(tiny_llama, tasks=[CHOICE])
    assert is_sharded_strategy(DecoderFSDPStrategy()) and not is_sharded_strategy(SingleDeviceStrategy())
    gathered = GatheredModule(module, {k: v.clone() for k, v in module.state_dict().items()})
    assert gathered.backbone_state_dict().keys() == module.backbone_state_dict().keys()
    with pytest.raises(ValueError, match="the gathered state dict lacks backbone weights"):
        GatheredModule(module, {})

    class Sharded(FSDPStrategy):
        _state_dict_type = "sharded"

    trainer = make_trainer(strategy=Sharded(device=torch.device("cpu")))
    trainer.strategy._lightning_module = module
    with pytest.raises(ValueError, match="saves 'sharded' state dicts; an expert needs the full weights"):
        ExpertCollector(experts_dir=str(trainer.default_root_dir)).setup(trainer, module, "fit")
