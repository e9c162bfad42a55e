"""`ReportCallback`: writes `report.{json,md,png}` after `python -m neuroflow test` of any MultiTaskModule.

The evaluation modules (merged models, experts, pre-trained backbone) write their own reports; this
callback gives the same report to a plain `MultiTaskModule` restored from a checkpoint, e.g. the
jointly trained multi-task model of a recipe, so that it joins the combined table.
"""

from __future__ import annotations

from lightning.pytorch import Callback, LightningModule, Trainer

from neuroflow.evaluation.report import build_report, metrics_from_logged, write_report
from neuroflow.evaluation.report_stats import confusions_of


class ReportCallback(Callback):
    """After `trainer.test`, write the module's per-task test metrics as a report (rank 0 only).

    Args:
        report_dir: where `report.{json,md,png}` go.
        name: the row name of the report (e.g. `multitask`).
    """

    def __init__(self, report_dir: str, name: str = "model") -> None:
        self.report_dir = report_dir
        self.name = name
        self._confusions: dict[str, list[list[float]]] | None = None

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Callbacks run before the module's own epoch end, which computes and resets the metrics;
        # every process takes part (the counts are summed across them).
        self._confusions = confusions_of(pl_module, "test")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        logged = getattr(pl_module, "last_metrics", {}).get("test") or dict(trainer.callback_metrics)
        tasks = list(pl_module.task_names)
        metrics = metrics_from_logged(logged, "test", tasks)
        report = build_report(
            self.name,
            metrics,
            primary={t: pl_module.task_specs[t].primary_metric for t in tasks},
            model={"kind": self.name, "class": type(pl_module).__name__,
                   "ckpt_path": str(trainer.ckpt_path) if trainer.ckpt_path else None},
            confusions=self._confusions,
        )
        write_report(report, self.report_dir)
