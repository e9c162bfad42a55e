"""Expert artifacts: writing and reading experts, the manifest, and base-model fingerprints."""

from neuroflow.experts.artifacts import (
    load_expert_head,
    load_task_vector,
    save_expert,
    task_vector_of,
)
from neuroflow.experts.fingerprint import fingerprint_state_dict
from neuroflow.experts.lora_delta import lora_adapter_deltas
from neuroflow.experts.manifest import find_expert, load_manifest, rebuild_manifest

__all__ = [
    "find_expert",
    "fingerprint_state_dict",
    "load_expert_head",
    "load_manifest",
    "load_task_vector",
    "lora_adapter_deltas",
    "rebuild_manifest",
    "save_expert",
    "task_vector_of",
]
