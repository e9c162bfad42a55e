"""How sure a report's numbers are: example counts, 95% intervals, and warnings about the scale.

A task's score comes from `n` test examples; with a few hundred of them, a 0.1-point lead between
two merges is noise. Intervals (95%):

- `accuracy`: Wilson's score interval for a binomial proportion (exact counts are known);
- `f1`, `f1_macro`, `mcc`: a percentile bootstrap over the examples, resampled from the task's
  confusion matrix (every metric is a function of it), 1000 resamples with a fixed seed.

A normalized score (model / expert) divides by the expert's own score, taken as fixed; averages
over tasks combine the per-task intervals as independent errors (normal approximation).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

LEVEL = 0.95
_Z = 1.959963984540054  # two-sided 95% quantile of the standard normal
BOOTSTRAP_SAMPLES = 1000


def wilson_interval(successes: float, n: int, z: float = _Z) -> tuple[float, float]:
    """Wilson's score interval of a proportion `successes / n`.

    Args:
        successes: number of successes (rounded to an integer count).
        n: number of trials (> 0).
        z: the normal quantile (1.96 for 95%).
    """
    k = min(max(round(successes), 0), n)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _metric_fn(metric: str, num_classes: int):
    from neuroflow.models import metrics as m

    return {
        "accuracy": m.accuracy_from_confusion,
        "f1": lambda cm: m.f1_from_confusion(cm, num_classes),
        "f1_macro": lambda cm: m.f1_macro_from_confusion(cm, num_classes),
        "mcc": m.mcc_from_confusion,
    }[metric]


def bootstrap_interval(confusion: Sequence[Sequence[float]], metric: str, samples: int = BOOTSTRAP_SAMPLES,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of `metric` over the examples counted in `confusion`.

    Args:
        confusion: `cm[target][pred]` counts, (C+1) x (C+1) as `TaskMetrics` keeps them.
        metric: `accuracy`, `f1`, `f1_macro` or `mcc`.
        samples: number of resamples.
        seed: seed of the resampling (reports are reproducible).
    """
    cm = np.asarray(confusion, dtype=np.float64)
    n = int(round(cm.sum()))
    fn = _metric_fn(metric, cm.shape[0] - 1)
    draws = np.random.default_rng(seed).multinomial(n, cm.ravel() / n, size=samples)
    values = [float(fn(torch.from_numpy(d.reshape(cm.shape).astype(np.float64)))) for d in draws]
    low, high = np.quantile(values, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return float(low), float(high)


def task_interval(metric: str, value: float, confusion: Sequence[Sequence[float]] | None) -> dict[str, Any] | None:
    """The 95% interval of a task's `metric`, or None without the counts.

    Args:
        metric: the metric's name.
        value: its value.
        confusion: the task's confusion matrix (None: unknown counts).
    """
    if confusion is None or not math.isfinite(value):
        return None
    n = int(round(float(np.asarray(confusion).sum())))
    if n == 0:
        return None
    if metric == "accuracy":
        low, high = wilson_interval(value * n, n)
        method = "wilson"
    else:
        low, high = bootstrap_interval(confusion, metric)
        method = "bootstrap"
    return {"level": LEVEL, "method": method, "low": low, "high": high}


def scaled(interval: Mapping[str, Any] | None, by: float | None) -> tuple[float, float] | None:
    """(low, high) of an interval divided by a positive reference (None when not possible)."""
    if interval is None or by is None or not by > 0:
        return None
    return interval["low"] / by, interval["high"] / by


def mean_interval(points: Sequence[tuple[float, tuple[float, float] | None]]) -> tuple[float, float] | None:
    """Interval of the mean of independent estimates `(value, (low, high))`; None if any is unknown."""
    if not points or any(bounds is None for _, bounds in points):
        return None
    count = len(points)
    mean = sum(v for v, _ in points) / count
    below = math.sqrt(sum((v - b[0]) ** 2 for v, b in points)) / count
    above = math.sqrt(sum((b[1] - v) ** 2 for v, b in points)) / count
    return mean - below, mean + above


def confusions_of(module: Any, stage: str) -> dict[str, list[list[float]]]:
    """Each task's confusion matrix of the running `stage`, summed over processes.

    Call it before the module computes and resets its metrics (at the epoch end); every process
    must call it (the sum is a collective operation under DDP).

    Args:
        module: a `MultiTaskModule` (its `task_metrics[stage]`).
        stage: `val` or `test`.
    """
    metrics = getattr(module, "task_metrics", None)
    if metrics is None or stage not in metrics:
        return {}
    out: dict[str, list[list[float]]] = {}
    for task, metric in metrics[stage].items():
        if not hasattr(metric, "confusion"):  # causal-LM task metrics count hits, not a confusion matrix
            continue
        with metric.sync_context(should_sync=True, should_unsync=True):
            out[task] = metric.confusion.detach().cpu().tolist()
    return out


def _fmt(value: float) -> str:
    return f"{value:.3f}"


def _bounds_text(bounds: tuple[float, float] | None) -> str:
    return f" (95% interval {_fmt(bounds[0])}-{_fmt(bounds[1])})" if bounds else ""


def above_one_warnings(run: str, tasks: Mapping[str, tuple[float | None, tuple[float, float] | None]]) -> list[dict[str, Any]]:
    """A warning for every task on which `run` scores above its expert (normalized > 1).

    Args:
        run: the evaluated model's name.
        tasks: task -> (normalized score, its interval or None).
    """
    out = []
    for task, (normalized, bounds) in tasks.items():
        if normalized is not None and normalized > 1:
            noise = bounds is not None and bounds[0] <= 1
            why = ("within noise of the expert" if noise else
                   "the expert is likely under-trained or not the right reference")
            out.append({
                "kind": "normalized_above_1", "run": run, "task": task, "normalized": normalized,
                "message": f"{run} scores above the {task} expert: normalized {_fmt(normalized)}"
                           f"{_bounds_text(bounds)} > 1 ({why})",
            })
    return out


def weak_expert_warnings(rows: Mapping[str, Mapping[str, Any]], pretrained: str) -> list[dict[str, Any]]:
    """A warning for every task whose expert is not clearly better than the pre-trained backbone.

    "Clearly" = the expert's 95% interval lies above the pre-trained model's (without intervals:
    the expert's value above the pre-trained one's). Normalized scores of such a task divide by a
    number that says little about the task.

    Args:
        rows: task -> {"expert": value, "expert_interval": interval or None,
            "pretrained": value, "pretrained_interval": interval or None}.
        pretrained: the pre-trained row's name (for messages).
    """
    out = []
    for task, row in rows.items():
        expert, base = row.get("expert"), row.get("pretrained")
        if expert is None or base is None:
            continue
        e_iv, b_iv = row.get("expert_interval"), row.get("pretrained_interval")
        expert_low = e_iv["low"] if e_iv else expert
        base_high = b_iv["high"] if b_iv else base
        if expert_low <= base_high:
            out.append({
                "kind": "expert_not_better_than_pretrained", "task": task, "expert": expert, "pretrained": base,
                "message": f"the {task} expert ({100 * expert:.2f}) is not clearly better than the pre-trained "
                           f"backbone ({pretrained}: {100 * base:.2f}): normalized scores on {task} are "
                           f"not meaningful",
            })
    return out
