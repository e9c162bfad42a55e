"""Reducing a stage's per-task metric states into the logged numbers.

Metrics are exact sums over all processes; losses (`{stage}/{task}/loss`) and the causal-LM
truncation counts (`{stage}/{task}/num_truncated`) are kept apart from the scores, because the
losses' batch means round differently with another number of processes and neither is a score.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from torchmetrics import Metric

from neuroflow.data.task_spec import TaskSpec


@dataclass
class StageResults:
    """What one evaluation stage produced.

    Attributes:
        metrics: `{stage}/{task}/{metric}`, `{stage}/avg/{metric}` and `{stage}/avg/score`.
        losses: `{stage}/{task}/loss` (and `{stage}/{task}/num_truncated` for causal-LM tasks).
        truncated: causal-LM task -> number of evaluated prompts truncated from the left.
    """

    metrics: dict[str, float] = field(default_factory=dict)
    losses: dict[str, float] = field(default_factory=dict)
    truncated: dict[str, int] = field(default_factory=dict)


def stage_results(metrics: Mapping[str, Metric], specs: Mapping[str, TaskSpec], stage: str) -> StageResults:
    """Compute (and, under DDP, sync) every task's metric state of `stage`.

    Args:
        metrics: task -> its metric state for this stage.
        specs: task -> spec (for the primary metric).
        stage: `val` or `test`.

    Raises:
        FloatingPointError: a task produced NaN/Inf logits; raised on every process after the same
            sync, so no process is left waiting.
    """
    out = StageResults()
    per_metric: dict[str, list[float]] = {}
    primaries: list[float] = []
    for task, metric in metrics.items():
        # Every process computes every task (the call syncs); the counts are the global ones.
        values = {k: float(v) for k, v in metric.compute().items()}
        nonfinite = int(values.pop("num_nonfinite", 0))
        if nonfinite:
            raise FloatingPointError(
                f"task {task!r}: {nonfinite} {stage} example(s) produced NaN/Inf logits; the model's weights "
                "or inputs are broken (diverged training, a bad merge, overflow in half precision)"
            )
        if values.pop("num_examples") == 0:
            continue
        out.losses[f"{stage}/{task}/loss"] = values.pop("loss")
        if "num_truncated" in values:
            out.truncated[task] = int(values.pop("num_truncated"))
            out.losses[f"{stage}/{task}/num_truncated"] = float(out.truncated[task])
        for name, value in values.items():
            out.metrics[f"{stage}/{task}/{name}"] = value
            per_metric.setdefault(name, []).append(value)
        primaries.append(values[specs[task].primary_metric])
    for name, values in per_metric.items():
        out.metrics[f"{stage}/avg/{name}"] = sum(values) / len(values)
    if primaries:
        out.metrics[f"{stage}/avg/score"] = sum(primaries) / len(primaries)
    return out
