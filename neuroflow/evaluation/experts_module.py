"""`ExpertsModule`: each task scored by its own expert, the upper reference row of a report.

The module holds one backbone and swaps in the expert's weights (`theta_0 + tau_t`) whenever a
batch of another task arrives; the DataModule's evaluation loaders are one task each, so that is
one swap per task and per stage. Swapping happens per process, so it runs unchanged under DDP.
"""

from __future__ import annotations

from typing import Any

from neuroflow.data.task_spec import TaskSpec
from neuroflow.evaluation.expert_heads_module import ExpertHeadsModule
from neuroflow.experts.source import ManifestExperts


class ExpertsModule(ExpertHeadsModule):
    """Every task evaluated with its own expert's backbone and head.

    Args:
        experts: an experts directory (manifest), or a list of expert folders.
        tasks: the tasks to evaluate, each with an expert; filled by the CLI from `data`.
        report_dir: where `test` writes `report.{json,md,png}`; None = no report files.
        backbone_kwargs: extra `from_pretrained` arguments for the base model.
    """

    report_kind = "experts"

    def __init__(
        self,
        experts: str | list[str] = "runs/experts",
        tasks: list[TaskSpec] | None = None,
        report_dir: str | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(experts=experts, tasks=tasks, report_dir=report_dir, backbone_kwargs=backbone_kwargs)
        self._source: ManifestExperts | None = None
        self.active_task: str | None = None

    def activate(self, task: str) -> None:
        """Load `task`'s expert backbone into the module (no-op if it is already loaded)."""
        if task == self.active_task:
            return
        if self._source is None:
            self._source = ManifestExperts(self.expert_set, self.base_state())
        index = self.expert_set.tasks.index(task)
        self.load_backbone_state_dict(self._source.weights(index))
        self.active_task = task

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> Any:
        self.activate(batch["task"])
        return super().validation_step(batch, batch_idx, dataloader_idx)

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> Any:
        self.activate(batch["task"])
        return super().test_step(batch, batch_idx, dataloader_idx)

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> Any:
        self.activate(batch["task"])
        return super().predict_step(batch, batch_idx, dataloader_idx)

    def reference_metrics(self, stage: str) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
        # The experts are their own reference: normalized scores of 1 by construction.
        if stage not in self.last_metrics:
            return super().reference_metrics(stage)
        from neuroflow.evaluation.report import metrics_from_logged

        metrics = metrics_from_logged(self.last_metrics[stage], stage, self.task_names)
        return metrics, {task: "evaluated" for task in metrics}
