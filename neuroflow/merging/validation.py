"""Input checks run before any merge work: every problem names the tensor and the expert."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from neuroflow.merging.routing import Route, matches
from neuroflow.merging.sources import ExpertSource, tensor_meta


class MergeInputError(ValueError):
    """The base or an expert cannot be merged (missing/extra key, shape, dtype, NaN/Inf, routing)."""


def _check_finite(tensor: Tensor, what: str) -> None:
    if not tensor.is_floating_point():
        return
    # A finite sum proves every entry finite at the cost of one read; only a non-finite sum (a
    # NaN/Inf, or an overflow of huge finite values) needs the exact element-wise check.
    wide = tensor.dtype if tensor.dtype in (torch.float32, torch.float64) else torch.float32
    if bool(torch.isfinite(tensor.sum(dtype=wide))):
        return
    if not bool(torch.isfinite(tensor).all()):
        bad = "NaN" if bool(torch.isnan(tensor).any()) else "Inf"
        raise MergeInputError(f"{what} contains {bad} values; refusing to merge")


def validate_inputs(
    base: Mapping[str, Tensor],
    experts: ExpertSource,
    routing: Mapping[str, Route],
    exclude: list[str] | tuple[str, ...] | None = None,
) -> None:
    """Refuse inputs that cannot be merged, before anything is computed.

    Checks, in order: at least one expert; routes consistent with shapes; every merged tensor
    present in every expert with the base's shape and dtype; no expert tensor the base lacks (unless
    excluded); no NaN/Inf in the merged tensors of the base and the experts.

    Args:
        base: the pre-trained weights.
        experts: the experts.
        routing: the route of every tensor of `base`.
        exclude: glob patterns of tensors that are not merged (their presence is not required).
    """
    if len(experts) == 0:
        raise MergeInputError("no experts given: merging needs at least one expert")
    merged = [name for name in base if routing[name].kind != "skip"]
    meta = {name: tensor_meta(base, name) for name in merged}
    for name in merged:
        route, (base_shape, _) = routing[name], meta[name]
        if route.kind == "neuron" and not (len(base_shape) >= 2 and 0 <= route.axis < len(base_shape)):
            raise MergeInputError(
                f"tensor {name!r} of shape {tuple(base_shape)} is routed as neurons along axis "
                f"{route.axis}, which it does not have; route it as 'point' instead"
            )
    base_keys = set(base)
    for i in range(len(experts)):
        who = experts.describe(i)
        keys = set(experts.keys(i))
        for name in merged:
            if name not in keys:
                raise MergeInputError(f"{who} is missing tensor {name!r} that the base has")
            shape, dtype = experts.meta(i, name)
            base_shape, base_dtype = meta[name]
            if tuple(shape) != tuple(base_shape):
                raise MergeInputError(f"{who}: tensor {name!r} has shape {tuple(shape)}, the base has {tuple(base_shape)}")
            if dtype != base_dtype:
                raise MergeInputError(f"{who}: tensor {name!r} has dtype {dtype}, the base has {base_dtype}")
        extra = sorted(k for k in keys - base_keys if not matches(k, exclude))
        if extra:
            raise MergeInputError(
                f"{who} has tensor {extra[0]!r} that the base does not have"
                + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
                + "; exclude it with a pattern if it is a task head"
            )
    for name in merged:
        _check_finite(base[name], f"base tensor {name!r}")
    for i in range(len(experts)):
        for name in merged:
            _check_finite(experts.get(i, name), f"{experts.describe(i)}: tensor {name!r}")
