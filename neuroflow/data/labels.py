"""Mapping source labels (names, integers, numeric strings) to indices of a task's `label_names`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from neuroflow.data.task_spec import TaskSpec


def _as_int(value: Any) -> int | None:
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("+-").isdigit():
            return int(text)
    return None


def map_labels(values: Sequence[Any] | np.ndarray, spec: TaskSpec, where: str) -> np.ndarray:
    """Indices into `spec.label_names` for every source label.

    Args:
        values: the source label column.
        spec: gives `label_names`, `label_format` and `label_offset`.
        where: the file(s) or dataset the labels come from, named in errors.

    Raises:
        ValueError: a label that is not a label name / not an integer, or whose index falls outside
            `label_names`; names the label, the task and `where`.
    """
    names = [str(n) for n in spec.label_names]
    by_name = {n: i for i, n in enumerate(names)}
    arr = np.asarray(values)
    if arr.dtype.kind in "iu" and spec.label_format != "name":
        idx = arr.astype(np.int64) - spec.label_offset
        bad = (idx < 0) | (idx >= len(names))
        if bad.any():
            first = arr[np.argmax(bad)].item()
            raise ValueError(_outside(first, spec, where, int(bad.sum())))
        return idx

    cache: dict[Any, int] = {}
    out = np.empty(len(arr), dtype=np.int64)
    for i, value in enumerate(values):
        key = value if not isinstance(value, np.generic) else value.item()
        if key not in cache:
            cache[key] = _one(key, spec, names, by_name, where)
        out[i] = cache[key]
    return out


def _one(value: Any, spec: TaskSpec, names: list[str], by_name: dict[str, int], where: str) -> int:
    as_name = str(value).strip() if isinstance(value, str) else None
    if spec.label_format in ("name", "auto") and as_name is not None and as_name in by_name:
        return by_name[as_name]
    if spec.label_format == "name":
        raise ValueError(
            f"task {spec.name!r}: label {value!r} in {where} is not one of the label_names {names}"
        )
    number = _as_int(value)
    if number is None:
        raise ValueError(
            f"task {spec.name!r}: label {value!r} in {where} is neither a label name ({names}) nor an "
            f"integer index"
        )
    index = number - spec.label_offset
    if not 0 <= index < len(names):
        raise ValueError(_outside(value, spec, where))
    return index


def _outside(value: Any, spec: TaskSpec, where: str, count: int = 1) -> str:
    offset = f" after subtracting label_offset {spec.label_offset}" if spec.label_offset else ""
    more = f" ({count} labels in all)" if count > 1 else ""
    return (
        f"task {spec.name!r}: label {value!r} in {where} is outside the {len(spec.label_names)} "
        f"label_names{offset} (valid indices 0..{len(spec.label_names) - 1}){more}"
    )
