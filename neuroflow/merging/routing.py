"""Routing: which merged tensors are neuron weights (and along which axis) and which are points.

NeuroMerging treats a weight whose slices along the output axis are neurons differently from
element-wise ("point") parameters, and the output axis is a property of the layer type, not of the
tensor's shape: `nn.Linear` stores `(out, in)` while GPT-2's `Conv1D` stores `(in, out)`. So the
routing of a real model comes from its modules (`routing_from_module`); bare state dicts fall back
to a shape rule (`routing_from_state_dict`). Either can be overridden by exact names or glob
patterns, and `exclude` patterns (task heads, buffers) mark tensors that are copied from the base.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Literal

import torch
from torch import Tensor, nn

from neuroflow.merging.sources import tensor_meta

RouteKind = Literal["neuron", "point", "skip"]


@dataclass(frozen=True)
class Route:
    """How one tensor is merged.

    Attributes:
        kind: "neuron" (slices along `axis` are neurons), "point" (element-wise) or "skip"
            (not merged: copied from the base).
        axis: the output-unit axis of a neuron weight (0 for `nn.Linear`, 1 for GPT-2 `Conv1D`).
    """

    kind: RouteKind
    axis: int = 0

    def to_neurons(self, x: Tensor, leading: int = 0) -> Tensor:
        """View `x` as `(*leading dims, neurons, fan_in)`.

        Args:
            x: the tensor, possibly with `leading` batch dims (e.g. the task dim) in front.
            leading: number of leading dims that are not part of the parameter's shape.
        """
        moved = torch.movedim(x, leading + self.axis, leading)
        return moved.reshape(*moved.shape[: leading + 1], -1)

    def from_neurons(self, rows: Tensor, shape: torch.Size) -> Tensor:
        """Inverse of `to_neurons` for a tensor without leading dims.

        Args:
            rows: `(neurons, fan_in)` values.
            shape: the parameter's shape.
        """
        moved_shape = (shape[self.axis],) + tuple(s for i, s in enumerate(shape) if i != self.axis)
        return torch.movedim(rows.reshape(moved_shape), 0, self.axis)


NEURON_ROWS = Route("neuron", 0)
NEURON_COLUMNS = Route("neuron", 1)
POINT = Route("point")
SKIP = Route("skip")
_NAMED_ROUTES = {
    "neuron": NEURON_ROWS,
    "neuron_rows": NEURON_ROWS,
    "neuron_columns": NEURON_COLUMNS,
    "point": POINT,
    "skip": SKIP,
}


def parse_route(value: Route | str) -> Route:
    """A `Route` from itself or from one of "neuron", "neuron_rows", "neuron_columns", "point", "skip".

    Args:
        value: the route or its name.
    """
    if isinstance(value, Route):
        return value
    if value not in _NAMED_ROUTES:
        raise ValueError(f"unknown route {value!r}; expected one of {sorted(_NAMED_ROUTES)}")
    return _NAMED_ROUTES[value]


def matches(name: str, patterns: list[str] | tuple[str, ...] | None) -> bool:
    """Whether `name` equals or glob-matches (`fnmatch`, case-sensitive) any of `patterns`.

    Args:
        name: a parameter name.
        patterns: exact names or glob patterns such as `"heads.*"` or `"*.classifier.*"`.
    """
    return any(name == p or fnmatchcase(name, p) for p in patterns or ())


def _override(name: str, overrides: Mapping[str, Route | str] | None) -> Route | None:
    if not overrides:
        return None
    if name in overrides:
        return parse_route(overrides[name])
    for pattern, route in overrides.items():
        if fnmatchcase(name, pattern):
            return parse_route(route)
    return None


def route_by_shape(tensor: Tensor | tuple[tuple[int, ...], torch.dtype]) -> Route:
    """The state-dict rule: 2-D floating tensors are neurons by rows, other floats points.

    Args:
        tensor: the tensor, or its `(shape, dtype)`.
    """
    shape, dtype = (tuple(tensor.shape), tensor.dtype) if isinstance(tensor, Tensor) else tensor
    if not dtype.is_floating_point:
        return SKIP
    return NEURON_ROWS if len(shape) == 2 else POINT


def routing_from_state_dict(
    state_dict: Mapping[str, Tensor], overrides: Mapping[str, Route | str] | None = None
) -> dict[str, Route]:
    """Route every tensor of a bare state dict by shape, unless an override names it.

    Args:
        state_dict: name -> tensor.
        overrides: exact name or glob pattern -> route (or route name); exact names win, then the
            first matching pattern in order.
    """
    return {name: _override(name, overrides) or route_by_shape(t) for name, t in state_dict.items()}


def _is_transposed_linear(module: nn.Module) -> bool:
    # Checked without importing transformers: a model built from it has already imported it.
    pytorch_utils = sys.modules.get("transformers.pytorch_utils")
    conv1d = getattr(pytorch_utils, "Conv1D", None)
    return conv1d is not None and isinstance(module, conv1d)


def _module_route(module: nn.Module, param_name: str, param: Tensor) -> Route:
    if not param.is_floating_point():
        return SKIP
    if param.dim() < 2:
        return POINT
    if param_name != "weight":
        return route_by_shape(param)
    if isinstance(module, (nn.Linear, nn.Embedding, nn.EmbeddingBag)):
        return NEURON_ROWS
    if _is_transposed_linear(module):
        return NEURON_COLUMNS
    if isinstance(module, nn.modules.conv._ConvNd):
        if not module.transposed:
            return NEURON_ROWS
        # ConvTranspose stores (in, out / groups, ...): output units are columns when ungrouped.
        return NEURON_COLUMNS if module.groups == 1 else POINT
    return route_by_shape(param)


def routing_from_module(
    model: nn.Module, overrides: Mapping[str, Route | str] | None = None
) -> dict[str, Route]:
    """Route every parameter and buffer of a model by the type of the module that owns it.

    `nn.Linear`/`nn.Embedding` weights are neurons by rows, convolutions by output channel,
    GPT-2-style `Conv1D` (stored `in x out`) by columns, 1-D parameters are points, buffers and
    non-float parameters are skipped, other weights follow the state-dict shape rule. Tied weights
    get a route under every name they have in the state dict.

    Args:
        model: the module whose `state_dict()` names will be merged.
        overrides: exact name or glob pattern -> route (or route name), applied last.
    """
    routing: dict[str, Route] = {}
    for prefix, module in model.named_modules(remove_duplicate=False):
        dot = f"{prefix}." if prefix else ""
        for name, param in module._parameters.items():
            if param is not None:
                routing[dot + name] = _module_route(module, name, param)
        for name, buffer in module._buffers.items():
            if buffer is not None:
                routing[dot + name] = SKIP
    for name in routing:
        override = _override(name, overrides)
        if override is not None:
            routing[name] = override
    return routing


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
