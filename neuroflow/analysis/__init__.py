"""neuroflow.analysis: why a merge loses a task, from the experts' task vectors alone (no Lightning).

```python
from neuroflow.analysis import analyze_experts, write_analysis, analysis_section
analysis = analyze_experts("runs/experts", mask_rate=0.8)   # per layer and task, streamed
write_analysis(analysis, "runs/analysis")                  # analysis.{json,md,png}
```
Per layer (`layer_of`) and task: the energy of the update parallel vs orthogonal to the
pre-trained neurons (`subspace.py`), sign conflicts and the mass lost to the sign election
(`conflicts.py`), overlap of the trimmed masks (`masks.py`), task-vector cosines
(`similarity.py`). See `docs/analysis.md`.
"""

from neuroflow.analysis.analyze import analyze_task_vectors, tensor_statistics
from neuroflow.analysis.command import write_analysis
from neuroflow.analysis.conflicts import SignCounts, election_loss, sign_counts
from neuroflow.analysis.experts import analyze_experts, load_base
from neuroflow.analysis.layers import layer_of, order_layers, short_layer_name
from neuroflow.analysis.masks import jaccard, mask_counts
from neuroflow.analysis.plots import plot_analysis
from neuroflow.analysis.similarity import cosine_matrix, gram
from neuroflow.analysis.stats import GroupStats
from neuroflow.analysis.subspace import neuron_energy, parallel_fraction
from neuroflow.analysis.summary import analysis_section, render_markdown

__all__ = [
    "GroupStats",
    "SignCounts",
    "analysis_section",
    "analyze_experts",
    "analyze_task_vectors",
    "cosine_matrix",
    "election_loss",
    "gram",
    "jaccard",
    "layer_of",
    "load_base",
    "mask_counts",
    "neuron_energy",
    "order_layers",
    "parallel_fraction",
    "plot_analysis",
    "render_markdown",
    "short_layer_name",
    "sign_counts",
    "tensor_statistics",
    "write_analysis",
]
