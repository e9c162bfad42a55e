"""Fixtures of the analysis tests: two tiny BERT experts written by hand (no Trainer)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from neuroflow.data import TaskSpec
from neuroflow.experts import fingerprint_state_dict, save_expert
from neuroflow.models import MultiTaskModule

TASKS = ("alpha", "beta")


def _spec(name: str) -> TaskSpec:
    return TaskSpec(name=name, kind="text_classification", source={"path": "csv"},
                    label_names=["negative", "positive"], text_column="text")


@pytest.fixture(scope="session")
def tiny_experts(tiny_bert: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An experts directory with two full experts of the tiny BERT, fine-tuned "by hand".

    `alpha` changes every backbone weight by small random noise; `beta` pushes every weight of
    `encoder.layer.1` against `alpha` (its update there is `-alpha`'s, doubled) plus noise
    elsewhere, so the layer-1 conflicts are known to be the highest. Frozen parameters (the
    pooler) stay unchanged, as in a real fit.
    """
    root = tmp_path_factory.mktemp("analysis_experts")
    generator = torch.Generator().manual_seed(0)
    alpha_update: dict[str, torch.Tensor] = {}
    for task in TASKS:
        module = MultiTaskModule(tiny_bert, tasks=[_spec(task)], head_dropout=0.0)
        base = {k: v.clone() for k, v in module.backbone_state_dict().items()}
        with torch.no_grad():
            for name, param in module.backbone.named_parameters():
                if not param.requires_grad:  # the pooler: frozen when fitting, so unchanged
                    continue
                noise = 0.01 * torch.randn(param.shape, generator=generator)
                if task == "alpha":
                    alpha_update[name] = noise
                elif name.startswith("encoder.layer.1."):
                    noise = -2.0 * alpha_update[name]
                param.add_(noise)
        save_expert(root, module, base, fingerprint_state_dict(base))
    return root
