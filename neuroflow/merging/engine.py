"""The merge engine: validate, gather statistics, then merge tensor by tensor.

```python
merged = merge_state_dicts(base, experts, NeuroMerging(mask_rate=0.8), routing=None, exclude=None)
```
The engine never holds more than one tensor's task vectors at a time (O(T x largest tensor) extra
memory), so experts can be streamed from disk (`SafetensorsExperts`). The result has the keys, shapes
and dtypes of `base` (and its tensors' devices; the arithmetic runs on the CPU); tensors that are not
merged are copies of the base.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from neuroflow.merging.base import MergeMethod
from neuroflow.merging.routing import SKIP, Route, matches, parse_route, route_by_shape
from neuroflow.merging.select import TrimStatistics
from neuroflow.merging.sources import DictExperts, ExpertSource, tensor_meta
from neuroflow.merging.task_vectors import TaskVectors, compute_dtype
from neuroflow.merging.validation import MergeInputError, validate_inputs

Progress = Callable[[str], Any] | Any  # a callable taking the tensor name, or a tqdm-like `.update(n)`


@dataclass
class MergeResult:
    """What a merge produced.

    Attributes:
        state_dict: the merged weights (`theta`), same keys, shapes and dtypes as the base.
        info: method name, hyper-parameters, statistics (e.g. `sigma_per_task`, `lambda_2`) and
            routing counts, JSON-friendly, for merge cards.
    """

    state_dict: dict[str, Tensor]
    info: dict[str, Any] = field(default_factory=dict)


def resolve_routing(
    base: Mapping[str, Tensor],
    routing: Mapping[str, Route | str] | None = None,
    exclude: Sequence[str] | None = None,
) -> dict[str, Route]:
    """The route of every tensor of `base`.

    Names missing from `routing` follow the shape rule (2-D float -> neuron rows, other float ->
    point); names matching `exclude` and non-float tensors are skipped (copied from the base).

    Args:
        base: the pre-trained weights.
        routing: name -> route (e.g. from `routing_from_module`); entries for names not in the base
            are ignored.
        exclude: exact names or glob patterns of tensors not to merge (task heads, buffers).
    """
    resolved = {}
    for name in base:
        shape, dtype = tensor_meta(base, name)
        if matches(name, exclude) or not dtype.is_floating_point:
            resolved[name] = SKIP
        elif routing is not None and name in routing:
            resolved[name] = parse_route(routing[name])
        else:
            resolved[name] = route_by_shape((shape, dtype))
    return resolved


def _jsonable(value: Any) -> Any:
    if isinstance(value, TrimStatistics):
        return value.summary()
    if isinstance(value, Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _tick(progress: Progress | None, name: str) -> None:
    if progress is None:
        return
    if hasattr(progress, "update"):
        progress.update(1)
    else:
        progress(name)


def merge(
    base: Mapping[str, Tensor],
    experts: Sequence[Mapping[str, Tensor]] | ExpertSource,
    method: MergeMethod,
    routing: Mapping[str, Route | str] | None = None,
    exclude: Sequence[str] | None = None,
    progress: Progress | None = None,
) -> MergeResult:
    """Merge experts into the base with `method`; returns the weights and a JSON-friendly info.

    Args:
        base: the pre-trained weights `theta_0` (a dict, or a lazy mapping such as `SafetensorsFile`).
        experts: the fine-tuned weights of each expert (mappings), or an `ExpertSource`.
        method: the merge method (e.g. `NeuroMerging(mask_rate=0.8)`).
        routing: name -> route; see `resolve_routing`.
        exclude: exact names or glob patterns of tensors copied from the base instead of merged.
        progress: called once per tensor of the base after it is done: a callable taking the name,
            or an object with `update(n)` such as `tqdm(total=len(base))`.
    """
    if not isinstance(method, MergeMethod):
        raise TypeError(f"method must be a MergeMethod, got {type(method).__name__}")
    with torch.no_grad():
        return _merge(base, experts, method, routing, exclude, progress)


def _merge(base, experts, method, routing, exclude, progress) -> MergeResult:
    source = experts if isinstance(experts, ExpertSource) else DictExperts(list(experts))
    routes = resolve_routing(base, routing, exclude)
    validate_inputs(base, source, routes, exclude)
    task_vectors = TaskVectors(base, source, routes)
    stats = method.prepare(task_vectors)

    merged: dict[str, Tensor] = {}
    for name in base:
        tensor, route = base[name], routes[name]
        if route.kind == "skip":
            merged[name] = tensor.detach().clone()
        else:
            dtype = compute_dtype(tensor.dtype)
            theta0 = tensor.detach().to(device="cpu", dtype=dtype)
            delta = method.merge_tensor(name, theta0, task_vectors.stack(name, base=tensor), route, stats)
            if delta.shape != tensor.shape:
                raise MergeInputError(
                    f"{type(method).__name__} returned shape {tuple(delta.shape)} for tensor {name!r} "
                    f"of shape {tuple(tensor.shape)}"
                )
            merged[name] = (theta0 + delta.to(dtype)).to(device=tensor.device, dtype=tensor.dtype)
        _tick(progress, name)

    kinds = [r.kind for r in routes.values()]
    info = {
        "method": method.name,
        "class_path": f"{type(method).__module__}.{type(method).__qualname__}",
        "hparams": _jsonable(method.hparams()),
        "num_experts": len(source),
        "statistics": _jsonable(stats),
        "routing": {k: kinds.count(k) for k in ("neuron", "point", "skip")},
        "merged_numel": task_vectors.numel,
    }
    return MergeResult(merged, info)


def merge_state_dicts(
    base: Mapping[str, Tensor],
    experts: Sequence[Mapping[str, Tensor]] | ExpertSource,
    method: MergeMethod,
    routing: Mapping[str, Route | str] | None = None,
    exclude: Sequence[str] | None = None,
    progress: Progress | None = None,
) -> dict[str, Tensor]:
    """The merged weights `theta` (same keys, shapes and dtypes as `base`); see `merge` for the info.

    Args:
        base: the pre-trained weights `theta_0`.
        experts: the fine-tuned weights of each expert, or an `ExpertSource`.
        method: the merge method.
        routing: name -> route; missing names follow the shape rule.
        exclude: exact names or glob patterns of tensors copied from the base.
        progress: per-tensor hook (callable taking the name, or tqdm-like `update`).
    """
    return merge(base, experts, method, routing=routing, exclude=exclude, progress=progress).state_dict
