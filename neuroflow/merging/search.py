"""Validation search: a grid over a merge method's hyperparameters, scored on validation data.

The driver is independent of Lightning: it takes a scorer `params -> {task: primary val metric}`
(the MergeModule's scorer re-merges and runs `Trainer.validate`) and the experts' validation
metrics, and picks the candidate with the best average normalized score (merged / expert, averaged
over tasks). Ties go to the earlier candidate, so the result is deterministic.
"""

from __future__ import annotations

import inspect
import itertools
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any



def normalized_score(value: float | None, expert: float | None) -> float | None:
    """`value / expert`, or None where the ratio means nothing (missing, non-finite, expert <= 0).

    Args:
        value: the evaluated model's primary metric on a task.
        expert: the task's expert on the same metric and split.
    """
    if value is None or expert is None:
        return None
    if not (math.isfinite(value) and math.isfinite(expert)) or expert <= 0:
        return None
    return value / expert


def expand_grid(search: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """All combinations of the listed values, in a fixed order (last key varies fastest).

    Args:
        search: hyperparameter name -> list of values, e.g. `{"lambda_1": [0, 0.5], "mask_rate": [0.8, 0.9]}`.

    Raises:
        ValueError: an empty grid, or a key whose value list is empty or not a list.
    """
    if not search:
        raise ValueError("search: the grid is empty; give at least one hyperparameter with values")
    for key, values in search.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
            raise ValueError(f"search: {key!r} must be a non-empty list of values, got {values!r}")
    keys = list(search)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(search[k] for k in keys))]


def method_hparams(method: Any) -> dict[str, Any]:
    """The constructor arguments of a merge method: `method.hparams()` where it exists, else
    the values of attributes named like its `__init__` parameters."""
    if callable(getattr(method, "hparams", None)):
        return dict(method.hparams())
    params = inspect.signature(type(method).__init__).parameters
    return {n: getattr(method, n) for n in params if n != "self" and hasattr(method, n)}


def check_search_keys(method: Any, search: Mapping[str, Any]) -> None:
    """Refuse grid keys that the method's constructor does not take, before any work.

    Raises:
        ValueError: names the unknown key(s), the method class and its parameters.
    """
    params = [
        n for n, p in inspect.signature(type(method).__init__).parameters.items()
        if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    unknown = [k for k in search if k not in params]
    if unknown:
        raise ValueError(
            f"search: {unknown} are not hyperparameters of {type(method).__name__} "
            f"(its parameters: {params})"
        )


def with_params(method: Any, params: Mapping[str, Any]) -> Any:
    """A new instance of `method`'s class with its hyperparameters updated by `params`."""
    return type(method)(**{**method_hparams(method), **params})


@dataclass
class SearchResult:
    """Every candidate's validation scores and the chosen one.

    `candidates[i]` = `{"params", "metrics": {task: primary val metric}, "normalized": {task: ratio}, "score"}`.
    """

    candidates: list[dict[str, Any]] = field(default_factory=list)
    best_index: int = -1

    @property
    def best(self) -> dict[str, Any]:
        return self.candidates[self.best_index]

    def as_dict(self) -> dict[str, Any]:
        return {"candidates": self.candidates, "best": self.best, "best_index": self.best_index}


def grid_search(
    candidates: Sequence[Mapping[str, Any]],
    score: Callable[[dict[str, Any]], Mapping[str, float]],
    reference: Mapping[str, float],
    on_candidate: Callable[[int, dict[str, Any]], None] | None = None,
) -> SearchResult:
    """Score every candidate and pick the best average normalized validation score.

    Args:
        candidates: hyperparameter dicts, e.g. from `expand_grid`.
        score: candidate params -> task -> primary validation metric of the merged model.
        reference: task -> the expert's primary validation metric (the normalizer).
        on_candidate: called after each candidate with its index and record (progress, logging).

    A task whose expert scores <= 0 (e.g. a Matthews correlation of 0 from an expert that
    predicts one class) cannot normalize anything; it is left out of the average with a warning
    and recorded under `excluded`, rather than stopping the search.

    Raises:
        ValueError: no candidates, a scored task without any reference, or no task left to rank by.
    """
    if not candidates:
        raise ValueError("search: no candidates to score")
    result = SearchResult()
    best_score = -math.inf
    warned: set[str] = set()
    for i, params in enumerate(candidates):
        params = dict(params)
        metrics = {task: float(v) for task, v in score(params).items()}
        normalized: dict[str, float] = {}
        excluded: list[str] = []
        for task, value in metrics.items():
            ref = reference.get(task)
            if ref is None:
                raise ValueError(f"search: no expert validation metric for task {task!r}")
            if not math.isfinite(ref) or ref <= 0:
                excluded.append(task)
                if task not in warned:
                    warned.add(task)
                    warnings.warn(f"search: task {task!r} is left out of the normalized average: its "
                                  f"expert's validation metric is {ref!r} (a ratio needs one > 0)", stacklevel=2)
                continue
            ratio = normalized_score(value, ref)
            normalized[task] = math.nan if ratio is None else ratio
        # NaN (a diverged candidate) must never win, so it ranks below everything.
        if not normalized and metrics:
            raise ValueError(f"search: no task has an expert validation metric > 0 (tasks {sorted(metrics)})")
        avg = sum(normalized.values()) / len(normalized) if normalized else math.nan
        record = {"params": params, "metrics": metrics, "normalized": normalized, "score": avg}
        if excluded:
            record["excluded"] = excluded
        result.candidates.append(record)
        if math.isfinite(avg) and avg > best_score:
            best_score, result.best_index = avg, i
        if on_candidate is not None:
            on_candidate(i, record)
    if result.best_index < 0:
        raise ValueError("search: every candidate scored NaN; nothing to choose")
    return result
