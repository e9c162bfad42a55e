"""LoRA experts merge as dense task vectors (B @ A * alpha / r), next to full fine-tuned ones."""

from __future__ import annotations

import torch

from neuroflow.callbacks.expert_collector import ExpertCollector
from neuroflow.evaluation import ExpertsModule, ManifestExperts, MergeModule
from neuroflow.experts import load_manifest
from neuroflow.merging import TIES, merge_state_dicts
from neuroflow.models import MultiTaskModule
from neuroflow.models.optim import AdamW
from eval_helpers import make_datamodule, quiet_trainer


def test_lora_and_full_experts_merge_together(direct, trained_experts, shared_data_dir, eval_cache, tmp_path):
    lora_dir = tmp_path / "lora_experts"
    dm = make_datamodule(direct.tiny_bert, shared_data_dir, eval_cache, ["trec"])
    torch.manual_seed(0)
    module = MultiTaskModule(backbone=direct.tiny_bert, tasks=dm.task_specs, head_dropout=0.0, lr_scheduler=None,
                             optimizer=lambda p: AdamW(p, lr=1e-2),
                             lora={"r": 4, "lora_alpha": 16, "target_modules": ["query", "value"]})
    quiet_trainer(max_steps=8, num_sanity_val_steps=0, limit_val_batches=0,
                  callbacks=[ExpertCollector(str(lora_dir), monitor=None)]).fit(module, datamodule=dm)
    entry = load_manifest(lora_dir)[0]
    assert entry["backbone"]["format"] == "lora"

    # Expert folders from two different experts directories, listed explicitly.
    model = MergeModule(experts=[str(lora_dir / "trec"), str(trained_experts / "sst2")], method=TIES())
    source = model.merger.source
    dense = {}
    adapter = module.backbone.state_dict()
    for name in ("encoder.layer.0.attention.self.query.weight", "encoder.layer.1.attention.self.value.weight"):
        peft_name = name.replace(".weight", "")
        a = next(v for k, v in adapter.items() if peft_name in k and "lora_A" in k)
        b = next(v for k, v in adapter.items() if peft_name in k and "lora_B" in k)
        dense[name] = b @ a * (16 / 4)
        torch.testing.assert_close(source.get(0, name), dense[name], rtol=1e-5, atol=1e-7)
        assert dense[name].abs().max() > 0
    # Tensors LoRA did not touch have a zero task vector.
    assert torch.count_nonzero(source.get(0, "encoder.layer.0.attention.self.key.weight")) == 0

    model.merge()
    experts = [source.weights(0), source.weights(1)]
    expected = merge_state_dicts(direct.base, experts, TIES(), routing=direct.routing)
    merged = model.backbone_state_dict()
    for key, value in expected.items():
        torch.testing.assert_close(merged[key], value, rtol=0, atol=2e-6, msg=key)

    # The LoRA expert evaluated on its own task equals the trained peft module's evaluation.
    experts_module = ExpertsModule(experts=[str(lora_dir / "trec")])
    trainer = quiet_trainer()
    trainer.test(experts_module, datamodule=dm, verbose=False)
    trainer.test(module, datamodule=dm, verbose=False)
    assert experts_module.last_metrics["test"]["test/trec/accuracy"] == module.last_metrics["test"]["test/trec/accuracy"]


def test_manifest_experts_stream_from_disk(trained_experts, direct):
    model = MergeModule(experts=str(trained_experts), method=TIES())
    source = model.merger.source
    assert isinstance(source, ManifestExperts) and len(source) == 2
    name = "encoder.layer.0.attention.self.query.weight"
    assert source.tasks == ["sst2", "trec"]  # manifest order (by name)
    tv = source.task_vector(1, name, direct.base[name], torch.float64)
    assert tv.dtype == torch.float64
    torch.testing.assert_close(tv.float() + direct.base[name], direct.experts[0][name], rtol=0, atol=1e-6)
    assert not torch.equal(direct.experts[0][name], direct.experts[1][name])
    # Read lazily: opening the source loaded no tensor data into memory.
    assert source._dense == {}
