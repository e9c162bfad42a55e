"""The analysis pass: stream the task vectors tensor by tensor and sum statistics per layer.

```python
analysis = analyze_task_vectors(base, experts, tasks=["sst2", "trec"], mask_rate=0.8, routing=routing)
analysis["model"]["conflict_rate"], analysis["layers"][0]["parallel_fraction"]
```
The experts are read through the merge engine's `ExpertSource` and `TaskVectors`, with the merge's
routing and its exact global trim (`TaskVectors.trim_statistics`, the threshold TIES and
NeuroMerging use), so the analysis sees what a merge sees. Memory: one tensor's `(T, *shape)`
task vectors at a time (plus block-sized temporaries), never the whole model's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from neuroflow.analysis.conflicts import election_loss, sign_counts
from neuroflow.analysis.layers import layer_of, order_layers
from neuroflow.analysis.masks import mask_counts
from neuroflow.analysis.similarity import gram
from neuroflow.analysis.stats import GroupStats, jsonable
from neuroflow.analysis.subspace import neuron_energy, parallel_fraction
from neuroflow.merging.engine import resolve_routing
from neuroflow.merging.routing import Route
from neuroflow.merging.sources import DictExperts, ExpertSource
from neuroflow.merging.steps import trim_tasks_
from neuroflow.merging.task_vectors import TaskVectors
from neuroflow.merging.validation import check_range, validate_inputs

FORMAT = "neuroflow.analysis/1"


def tensor_statistics(base: Tensor, task_vectors: Tensor, route: Route, thresholds: list[Tensor | None]) -> GroupStats:
    """Every statistic of one merged tensor.

    Args:
        base: the pre-trained tensor `theta_0[name]`.
        task_vectors: its task vectors, shape `(T, *base.shape)`; trimmed in place (the caller
            passes a stack it does not need afterwards, so no second copy is made).
        route: the tensor's route (neuron energies only for "neuron").
        thresholds: the global per-task trim thresholds (`TrimStatistics.thresholds`).
    """
    stats = GroupStats(task_vectors.shape[0])
    stats.numel, stats.tensors = base.numel(), 1
    stats.gram = gram(task_vectors)
    neuron = route.kind == "neuron" and base.numel() > 0
    if neuron:
        w0 = route.to_neurons(base.detach().to("cpu"))
        stats.neuron_tensors, stats.neuron_rows, stats.neuron_numel = 1, w0.shape[0], w0.numel()
        stats.parallel, stats.orthogonal = neuron_energy(w0, route.to_neurons(task_vectors, leading=1))
    trimmed = trim_tasks_(task_vectors, thresholds)
    if neuron:
        stats.parallel_trimmed, stats.orthogonal_trimmed = neuron_energy(w0, route.to_neurons(trimmed, leading=1))
    stats.support, stats.intersection = mask_counts(trimmed)
    stats.signs = sign_counts(trimmed)
    stats.lost_mass, stats.kept_mass = election_loss(trimmed)
    return stats


def _tensor_record(name: str, layer: str, route: Route, stats: GroupStats, tasks: list[str]) -> dict[str, Any]:
    """The small per-tensor entry of `analysis.json` (which sub-module a layer's numbers come from)."""
    signs = stats.signs
    return {
        "name": name,
        "layer": layer,
        "route": route.kind,
        "numel": stats.numel,
        "parallel_fraction": dict(zip(tasks, jsonable(parallel_fraction(stats.parallel, stats.orthogonal))))
        if stats.neuron_tensors else None,
        "norm": dict(zip(tasks, jsonable(stats.gram.diagonal().clamp(min=0).sqrt()))),
        "conflict_rate": jsonable(signs.conflicts / signs.overlap) if signs.overlap else None,
    }


def analyze_task_vectors(
    base: Mapping[str, Tensor],
    experts: Sequence[Mapping[str, Tensor]] | ExpertSource,
    tasks: Sequence[str] | None = None,
    mask_rate: float = 0.8,
    routing: Mapping[str, Route | str] | None = None,
    exclude: Sequence[str] | None = None,
    progress: Callable[[str], Any] | None = None,
) -> dict[str, Any]:
    """Analyse how T experts' task vectors relate, per layer and over the whole model.

    Args:
        base: the pre-trained weights `theta_0` (any mapping; may be lazy).
        experts: the experts' fine-tuned weights (mappings) or an `ExpertSource` (e.g.
            `ManifestExperts`).
        tasks: a name per expert; default the source's `tasks` attribute, else `expert <i>`.
        mask_rate: fraction of each task vector dropped by magnitude, over the whole model, as
            in TIES/NeuroMerging, in [0, 1) (0 analyses the untrimmed task vectors).
        routing: name -> route, as the merge gets it (`routing_from_module` of the backbone);
            None = the state-dict shape rule.
        exclude: names or glob patterns of tensors left out (as the merge's `exclude`).
        progress: called with each tensor's name after it is analysed.

    Returns:
        a JSON-ready dict: `format`, `tasks`, `mask_rate`, `trim`, `model` (whole-model summary),
        `layers` (one summary per layer group, in reading order) and `tensors`.

    Raises:
        MergeInputError: inputs the merge would refuse (missing tensors, shape/dtype mismatches,
            NaN/Inf), before any statistics.
    """
    mask_rate = check_range("analysis", "mask_rate", mask_rate, 0.0, 1.0, high_inclusive=False)
    source = experts if isinstance(experts, ExpertSource) else DictExperts(list(experts))
    names = list(tasks) if tasks is not None else list(getattr(source, "tasks", None) or
                                                       [f"expert {i}" for i in range(len(source))])
    if len(names) != len(source) or len(set(names)) != len(names):
        raise ValueError(f"need one distinct task name per expert ({len(source)}), got {names}")
    with torch.no_grad():
        routes = resolve_routing(base, routing, exclude)
        validate_inputs(base, source, routes, list(exclude) if exclude else None)
        task_vectors = TaskVectors(base, source, routes)
        trim = task_vectors.trim_statistics(mask_rate)
        model = GroupStats(len(names))
        layers: dict[str, GroupStats] = {}
        tensors = []
        for name in task_vectors.names:
            tensor = base[name]
            stats = tensor_statistics(tensor, task_vectors.stack(name, tensor), routes[name], trim.thresholds)
            layer = layer_of(name)
            layers.setdefault(layer, GroupStats(len(names))).add(stats)
            model.add(stats)
            tensors.append(_tensor_record(name, layer, routes[name], stats, names))
            if progress is not None:
                progress(name)
    return {
        "format": FORMAT,
        "tasks": names,
        "mask_rate": mask_rate,
        "trim": trim.summary(),
        "model": model.summary(names, total=model),
        "layers": [{"layer": layer, **layers[layer].summary(names, total=model)} for layer in order_layers(layers)],
        "tensors": tensors,
    }
