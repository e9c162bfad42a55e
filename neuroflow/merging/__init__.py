"""neuroflow.merging: pure tensor merge methods, routing and streamed statistics (no Lightning).

```python
from neuroflow.merging import merge_state_dicts, NeuroMerging
merged = merge_state_dicts(base, experts, NeuroMerging(mask_rate=0.8, lambda_1=0.0, lambda_2="auto"))
```
"""

from neuroflow.merging.averaging import WeightAveraging
from neuroflow.merging.base import MergeMethod
from neuroflow.merging.dare import DARE
from neuroflow.merging.engine import MergeResult, merge, merge_state_dicts, resolve_routing
from neuroflow.merging.fisher import FisherMerging
from neuroflow.merging.iso import IsoC, IsoCTS
from neuroflow.merging.neuromerging import NeuroMerging, neuron_merge
from neuroflow.merging.routing import (
    NEURON_COLUMNS,
    NEURON_ROWS,
    POINT,
    SKIP,
    Route,
    routing_from_module,
    routing_from_state_dict,
)
from neuroflow.merging.regmean import RegMean
from neuroflow.merging.select import TrimStatistics, streamed_trim_statistics
from neuroflow.merging.sources import DictExperts, ExpertSource, SafetensorsExperts, SafetensorsFile
from neuroflow.merging.task_arithmetic import TaskArithmetic
from neuroflow.merging.task_vectors import TaskVectors
from neuroflow.merging.ties import TIES
from neuroflow.merging.tsv import TSVMerge
from neuroflow.merging.validation import MergeInputError

__all__ = [
    "DARE",
    "NEURON_COLUMNS",
    "NEURON_ROWS",
    "POINT",
    "SKIP",
    "TIES",
    "DictExperts",
    "ExpertSource",
    "FisherMerging",
    "IsoC",
    "IsoCTS",
    "MergeInputError",
    "MergeMethod",
    "MergeResult",
    "NeuroMerging",
    "RegMean",
    "Route",
    "SafetensorsExperts",
    "SafetensorsFile",
    "TSVMerge",
    "TaskArithmetic",
    "TaskVectors",
    "TrimStatistics",
    "WeightAveraging",
    "merge",
    "merge_state_dicts",
    "neuron_merge",
    "resolve_routing",
    "routing_from_module",
    "routing_from_state_dict",
    "streamed_trim_statistics",
]
