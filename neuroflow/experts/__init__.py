"""Experts: the typed `Expert` and its one reader/writer, collections (`ExpertSet`), the manifest,
artifacts, base fingerprints, the `ExpertSource` the merge engine reads, and the `Merger`."""

from neuroflow.experts.artifacts import (
    load_expert_head,
    load_task_vector,
    save_expert,
    task_vector_of,
)
from neuroflow.experts.expert import Expert, ExpertFormatError, HeadRef, Weights, read_expert
from neuroflow.experts.expert_set import ExpertInputError, ExpertSet
from neuroflow.experts.fingerprint import fingerprint_state_dict
from neuroflow.experts.lora_delta import lora_adapter_deltas
from neuroflow.experts.manifest import find_expert, load_experts, load_manifest, rebuild_manifest
from neuroflow.experts.merger import MergedWeights, Merger
from neuroflow.experts.source import ManifestExperts

__all__ = [
    "Expert",
    "ExpertFormatError",
    "ExpertInputError",
    "ExpertSet",
    "HeadRef",
    "ManifestExperts",
    "MergedWeights",
    "Merger",
    "Weights",
    "find_expert",
    "fingerprint_state_dict",
    "load_expert_head",
    "load_experts",
    "load_manifest",
    "load_task_vector",
    "lora_adapter_deltas",
    "read_expert",
    "rebuild_manifest",
    "save_expert",
    "task_vector_of",
]
