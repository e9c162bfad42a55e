"""What a task kind does in each step: the interface `MultiTaskModule` dispatches on.

`MultiTaskModule` holds one `TaskSteps` per task kind and calls it with itself, so the kind code
(classification and text2text in `steps_classification`, causal LMs in `llm_scoring`) reads the
module's backbone, heads, verbalizers and tokenizer, and the module only orchestrates.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torchmetrics import Metric

if TYPE_CHECKING:
    from neuroflow.data.task_spec import TaskSpec
    from neuroflow.models.multitask_module import MultiTaskModule


class TaskSteps:
    """The training, evaluation and prediction steps of one task kind."""

    def make_metric(self, spec: TaskSpec) -> Metric:
        """A fresh metric state for one task and one stage."""
        raise NotImplementedError

    def training_loss(self, module: MultiTaskModule, batch: dict[str, Any]) -> torch.Tensor:
        """The loss to minimise on a training batch."""
        raise NotImplementedError

    def evaluate(self, module: MultiTaskModule, batch: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        """(loss, predicted class indices, target class indices, examples with non-finite logits)."""
        raise NotImplementedError(
            f"{type(self).__name__} does not predict class indices; use `predict_step` for its outputs"
        )

    def eval_update(self, module: MultiTaskModule, batch: dict[str, Any], metric: Metric) -> torch.Tensor:
        """Score an evaluation batch into `metric`; returns the batch's loss."""
        loss, preds, targets, nonfinite = self.evaluate(module, batch)
        metric.update(preds, targets, loss.detach(), nonfinite=nonfinite)
        return loss

    def predict(self, module: MultiTaskModule, batch: dict[str, Any]) -> dict[str, Any]:
        """What `predict_step` returns for a batch."""
        _, preds, targets, _ = self.evaluate(module, batch)
        return {"task": batch["task"], "preds": preds, "targets": targets}


def nonfinite_rows(values: torch.Tensor) -> torch.Tensor:
    """How many rows (first dim) hold a NaN or Inf anywhere, as a device tensor (no host sync)."""
    return (~torch.isfinite(values)).reshape(values.shape[0], -1).any(dim=1).sum()
