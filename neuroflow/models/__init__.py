"""Backbones, heads, LoRA, metrics and the `MultiTaskModule` LightningModule."""

from neuroflow.models.backbone import dedupe_tied, hidden_size_of, load_backbone, resolve_family
from neuroflow.models.heads import ClassificationHead
from neuroflow.models.lora import apply_lora, check_lora_targets, plain_state_dict
from neuroflow.models.metrics import TaskMetrics
from neuroflow.models.multitask_module import MultiTaskModule
from neuroflow.models.optim import AdamW, LinearWarmup
from neuroflow.models.verbalizer import Verbalizer

__all__ = [
    "AdamW",
    "ClassificationHead",
    "LinearWarmup",
    "MultiTaskModule",
    "TaskMetrics",
    "Verbalizer",
    "apply_lora",
    "check_lora_targets",
    "dedupe_tied",
    "hidden_size_of",
    "load_backbone",
    "plain_state_dict",
    "resolve_family",
]
