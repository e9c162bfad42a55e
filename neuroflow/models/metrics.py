"""Per-task classification metrics computed from one confusion matrix.

One `torchmetrics.Metric` holds a (C+1) x (C+1) confusion matrix per task: the extra predicted class
collects text-to-text outputs that match no label name (always wrong, and not a class of its own
in macro averages). Every metric is derived from that matrix, so all of them sync across
processes with one all-reduce and agree with each other.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

METRICS = ("accuracy", "f1_macro", "f1", "mcc")


def check_metric_names(names: list[str], task: str) -> None:
    """Raise a ValueError naming the task if a metric name is unknown."""
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"task {task!r}: unknown metric(s) {unknown}; supported: {list(METRICS)}")


def accuracy_from_confusion(cm: torch.Tensor) -> torch.Tensor:
    """Fraction of correct predictions; `cm[target, pred]`."""
    total = cm.sum()
    return cm.diagonal().sum() / total if total > 0 else torch.zeros((), dtype=cm.dtype)


def f1_per_class(cm: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """F1 of each real class and whether the class occurs (as a target or a prediction)."""
    tp = cm.diagonal()[:num_classes]
    support = cm[:num_classes].sum(dim=1)
    predicted = cm[:, :num_classes].sum(dim=0)
    denom = support + predicted
    f1 = torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.zeros_like(tp))
    return f1, denom > 0


def f1_macro_from_confusion(cm: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Unweighted mean F1 over the classes that occur (scikit-learn's `average="macro"`)."""
    f1, present = f1_per_class(cm, num_classes)
    return f1[present].mean() if present.any() else torch.zeros((), dtype=cm.dtype)


def f1_from_confusion(cm: torch.Tensor, num_classes: int) -> torch.Tensor:
    """F1 of class 1 for binary tasks (spam, acceptable, ...), macro F1 otherwise."""
    if num_classes == 2:
        return f1_per_class(cm, num_classes)[0][1]
    return f1_macro_from_confusion(cm, num_classes)


def mcc_from_confusion(cm: torch.Tensor) -> torch.Tensor:
    """Multi-class Matthews correlation (Gorodkin's R_K); 0 when undefined."""
    cm = cm.to(torch.float64)
    total = cm.sum()
    correct = cm.diagonal().sum()
    true_counts = cm.sum(dim=1)
    pred_counts = cm.sum(dim=0)
    cov_tp = correct * total - (true_counts * pred_counts).sum()
    cov_pp = total**2 - (pred_counts**2).sum()
    cov_tt = total**2 - (true_counts**2).sum()
    denom = torch.sqrt(cov_pp * cov_tt)
    return (cov_tp / denom if denom > 0 else torch.zeros((), dtype=cm.dtype)).to(torch.float32)


class TaskMetrics(Metric):
    """Accuracy, macro F1, binary F1 and Matthews correlation of one task.

    Args:
        num_classes: number of label names.
        metrics: names to compute, in `TaskSpec.metrics` order (first = primary).
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, num_classes: int, metrics: list[str] | tuple[str, ...] = ("accuracy",)):
        super().__init__()
        self.num_classes = num_classes
        self.metric_names = list(metrics)
        # Row = target, column = prediction; column `num_classes` = "no valid prediction".
        self.add_state(
            "confusion",
            default=torch.zeros(num_classes + 1, num_classes + 1, dtype=torch.float64),
            dist_reduce_fx="sum",
        )
        # The evaluation loss lives in the metric's state too, so that it is reduced exactly like
        # the counts (a per-step `self.log(sync_dist=True)` would need the same keys on every rank).
        self.add_state("loss_sum", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        # Examples whose logits held NaN/Inf: the module raises at the end of the stage (on every
        # process at once, after the sync) instead of scoring them as wrong predictions.
        self.add_state("nonfinite", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(
        self,
        preds: torch.Tensor,
        target: torch.Tensor,
        loss: torch.Tensor | float | None = None,
        nonfinite: torch.Tensor | int | None = None,
    ) -> None:
        """Add predictions (class indices, -1 or out-of-range = invalid), targets, optionally the
        batch's mean loss (weighted by the batch size) and the number of examples whose logits were
        not finite."""
        preds = preds.detach().long().flatten()
        target = target.detach().long().flatten().to(preds.device)
        if target.numel() and (target.min() < 0 or target.max() >= self.num_classes):
            raise ValueError(
                f"targets must be class indices in [0, {self.num_classes}), got "
                f"[{int(target.min())}, {int(target.max())}]"
            )
        invalid = (preds < 0) | (preds >= self.num_classes)
        preds = torch.where(invalid, torch.full_like(preds, self.num_classes), preds)
        index = target * (self.num_classes + 1) + preds
        counts = torch.bincount(index, minlength=(self.num_classes + 1) ** 2)
        self.confusion += counts.reshape(self.num_classes + 1, -1).to(self.confusion)
        if loss is not None:
            # Stays on the device: a `float()` here would stall every GPU evaluation step.
            loss = torch.as_tensor(loss, device=self.loss_sum.device).detach().to(self.loss_sum.dtype)
            self.loss_sum += loss * target.numel()
        if nonfinite is not None:
            self.nonfinite += torch.as_tensor(nonfinite, device=self.nonfinite.device).detach().to(self.nonfinite.dtype)

    def compute(self) -> dict[str, torch.Tensor]:
        cm = self.confusion
        out: dict[str, torch.Tensor] = {}
        for name in self.metric_names:
            if name == "accuracy":
                value = accuracy_from_confusion(cm)
            elif name == "f1_macro":
                value = f1_macro_from_confusion(cm, self.num_classes)
            elif name == "f1":
                value = f1_from_confusion(cm, self.num_classes)
            elif name == "mcc":
                value = mcc_from_confusion(cm)
            else:
                raise ValueError(f"unknown metric {name!r}; supported: {list(METRICS)}")
            out[name] = value.to(torch.float32)
        # Reduced over all processes when called under DDP: callers skip tasks with no example
        # from this count, never from the local one (ranks would disagree and hang the next sync).
        out["num_examples"] = cm.sum()
        out["loss"] = (self.loss_sum / cm.sum() if cm.sum() > 0 else torch.zeros((), dtype=cm.dtype)).to(torch.float32)
        out["num_nonfinite"] = self.nonfinite
        return out
