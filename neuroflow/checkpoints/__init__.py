"""neuroflow.checkpoints: Hugging Face checkpoints and peft adapters in, a sharded model out.

```python
from neuroflow.checkpoints import merge_checkpoints
from neuroflow.merging import TIES
card = merge_checkpoints("base/", ["ft-a/", "org/ft-b", "lora-c/"], TIES(mask_rate=0.8), "out/", dtype="bfloat16")
```
Readers (`CheckpointFolder`, `AdapterExpert`, hub ids), header-only checks (`check_experts`), the
streaming `ShardWriter`, the output folder and model card, and the MergeKit YAML converter
(`from_mergekit`). See `docs/checkpoints.md`.
"""

from neuroflow.checkpoints.adapter import AdapterExpert, is_adapter
from neuroflow.checkpoints.checks import CheckReport, check_experts
from neuroflow.checkpoints.errors import CheckpointError
from neuroflow.checkpoints.folder import CheckpointFolder, has_weights
from neuroflow.checkpoints.merge import classify, merge_checkpoints
from neuroflow.checkpoints.mergekit import MergekitPlan, from_mergekit
from neuroflow.checkpoints.safetensors_io import read_header, read_tensor
from neuroflow.checkpoints.shard_writer import ShardWriter, parse_size
from neuroflow.checkpoints.source import CheckpointExperts, checkpoint_experts

__all__ = [
    "AdapterExpert",
    "CheckReport",
    "CheckpointError",
    "CheckpointExperts",
    "CheckpointFolder",
    "MergekitPlan",
    "ShardWriter",
    "check_experts",
    "checkpoint_experts",
    "classify",
    "from_mergekit",
    "has_weights",
    "is_adapter",
    "merge_checkpoints",
    "parse_size",
    "read_header",
    "read_tensor",
]
