"""Checks run before any merge work: hyperparameters at construction, inputs before the merge.

Every merge method validates its constructor arguments with the `check_*` helpers below (the
constructors are the YAML schema, so this is also where a config's `.nan` is refused); each raises
a `ValueError` naming the method class, the argument and the value. The input checks name the
tensor and the expert.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection, Mapping
from typing import Any, TypeVar

import torch
from torch import Tensor

from neuroflow.merging.routing import Route, matches
from neuroflow.merging.sources import ExpertSource, tensor_meta


class MergeInputError(ValueError):
    """The base or an expert cannot be merged (missing/extra key, shape, dtype, NaN/Inf, routing)."""


_Choice = TypeVar("_Choice")


def _owner(method: object) -> str:
    return method if isinstance(method, str) else type(method).__name__


def _bound(value: float) -> str:
    return f"{value:g}"


def _real(method: object, name: str, value: Any, expected: str) -> float:
    # bool is an int and str may parse as a float: both are config mistakes, not numbers.
    if isinstance(value, (bool, str, bytes)) or value is None:
        raise ValueError(f"{_owner(method)}: {name} must be {expected}, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{_owner(method)}: {name} must be {expected}, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{_owner(method)}: {name} must be {expected}, got {value!r}")
    return number


def check_finite(method: object, name: str, value: Any, special: Collection[str] = ()) -> Any:
    """`value` as a finite float, or unchanged when it is one of the `special` strings.

    Args:
        method: the method instance (or its class name), named in the message.
        name: the argument name.
        value: the argument.
        special: strings allowed instead of a number (e.g. `("auto",)`).

    Raises:
        ValueError: "<Class>: <name> must be a finite number[ or 'auto'], got <value>".
    """
    if isinstance(value, str) and value in special:
        return value
    expected = " or ".join(["a finite number", *(repr(s) for s in special)])
    return _real(method, name, value, expected)


def check_range(
    method: object,
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> float:
    """`value` as a finite float within `[low, high]` (either end open or absent).

    Args:
        method: the method instance (or its class name), named in the message.
        name: the argument name.
        value: the argument.
        low: the lower bound (None: none).
        high: the upper bound (None: none).
        low_inclusive: `low` itself is allowed.
        high_inclusive: `high` itself is allowed.

    Raises:
        ValueError: e.g. "TIES: mask_rate must be in [0, 1), got 1.0".
    """
    if low is not None and high is not None:
        expected = f"in {'[' if low_inclusive else '('}{_bound(low)}, {_bound(high)}{']' if high_inclusive else ')'}"
    elif low is not None:
        expected = f"{'>=' if low_inclusive else '>'} {_bound(low)}"
    elif high is not None:
        expected = f"{'<=' if high_inclusive else '<'} {_bound(high)}"
    else:
        expected = "a finite number"
    number = _real(method, name, value, expected if expected == "a finite number" else f"a finite number {expected}")
    above = low is None or (number >= low if low_inclusive else number > low)
    below = high is None or (number <= high if high_inclusive else number < high)
    if not (above and below):
        raise ValueError(f"{_owner(method)}: {name} must be {expected}, got {value!r}")
    return number


def check_int(method: object, name: str, value: Any, low: int | None = None, high: int | None = None) -> int:
    """`value` as an int (an integral float such as `3.0` is accepted) within `[low, high]`.

    Raises:
        ValueError: "<Class>: <name> must be an integer, got <value>" (or the bound it breaks).
    """
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        number = int(value)
    else:
        as_float = _real(method, name, value, "an integer")
        if not as_float.is_integer():
            raise ValueError(f"{_owner(method)}: {name} must be an integer, got {value!r}")
        number = int(as_float)
    if low is not None and number < low:
        raise ValueError(f"{_owner(method)}: {name} must be >= {low}, got {value!r}")
    if high is not None and number > high:
        raise ValueError(f"{_owner(method)}: {name} must be <= {high}, got {value!r}")
    return number


def check_choice(method: object, name: str, value: _Choice, choices: Collection[_Choice]) -> _Choice:
    """`value` itself when it is one of `choices` (strings, booleans, ...), compared by type too:
    `1` is not `True` and `1.0` is not `"1.0"`.

    Raises:
        ValueError: "<Class>: <name> must be one of 'a', 'b', got 'c'".
    """
    for choice in choices:
        same_kind = isinstance(value, type(choice)) and isinstance(value, bool) == isinstance(choice, bool)
        if same_kind and value == choice:
            return value
    allowed = ", ".join(repr(c) for c in choices)
    raise ValueError(f"{_owner(method)}: {name} must be one of {allowed}, got {value!r}")


def all_finite(tensor: Tensor) -> bool:
    """Whether every entry is finite, reading the tensor once without a full-size temporary."""
    if not tensor.is_floating_point():
        return True
    flat = tensor.reshape(-1)
    if tensor.dtype in (torch.float32, torch.float64, torch.bfloat16):
        # A finite sum proves every entry finite; only a non-finite sum (a NaN/Inf, or an
        # overflow of huge finite values) needs the element-wise check. bfloat16 sums accumulate
        # in float32 inside the kernel (same exponent range); `sum(dtype=float32)` would first
        # copy the whole tensor.
        if bool(torch.isfinite(flat.sum())):
            return True
    else:
        # Narrow dtypes (float16 overflows its sum easily): blocks summed in float32.
        step = 1 << 20
        if all(bool(torch.isfinite(flat[i : i + step].sum(dtype=torch.float32))) for i in range(0, flat.numel(), step)):
            return True
    return bool(torch.isfinite(tensor).all())


def _check_finite_tensor(tensor: Tensor, what: str) -> None:
    if not all_finite(tensor):
        bad = "NaN" if bool(torch.isnan(tensor).any()) else "Inf"
        raise MergeInputError(f"{what} contains {bad} values; refusing to merge")


def non_float_message(name: str, dtype: torch.dtype, route: Route) -> str:
    """Why an integer or bool tensor routed for merging is refused (it would be cast to float)."""
    return (
        f"tensor {name!r} has dtype {dtype} but is routed {route.kind!r}: only floating-point tensors "
        "are merged, integer and bool tensors (buffers such as position_ids, masks) are copied from "
        "the base; route it 'skip'"
    )


def validate_inputs(
    base: Mapping[str, Tensor],
    experts: ExpertSource,
    routing: Mapping[str, Route],
    exclude: list[str] | tuple[str, ...] | None = None,
) -> None:
    """Refuse inputs that cannot be merged, before anything is computed.

    Checks, in order: at least one expert; only floating-point tensors merged; routes consistent
    with shapes; every merged tensor
    present in every expert with the base's shape and dtype; no expert tensor the base lacks (unless
    excluded). Values (NaN/Inf) are checked where they are first read, by `TaskVectors` (see
    `check_values`), so the inputs are not read an extra time.

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
        route, (base_shape, base_dtype) = routing[name], meta[name]
        if not base_dtype.is_floating_point:
            raise MergeInputError(non_float_message(name, base_dtype, route))
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


def check_values(base: Mapping[str, Tensor], experts: ExpertSource, name: str) -> None:
    """Name the input behind non-finite task vectors of tensor `name` (the base's or an expert's
    NaN/Inf), or, when every input is finite, the overflow of their difference.

    Raises:
        MergeInputError: always; called once the task vectors were found not finite.
    """
    _check_finite_tensor(base[name], f"base tensor {name!r}")
    for i in range(len(experts)):
        _check_finite_tensor(experts.get(i, name), f"{experts.describe(i)}: tensor {name!r}")
    raise MergeInputError(
        f"the task vectors of tensor {name!r} (expert minus base) overflow to Inf although every input "
        "value is finite; refusing to merge"
    )
