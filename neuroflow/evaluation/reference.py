"""The one resolver of the normalizing reference: the experts' metrics a model's scores are divided by.

A report's normalized score of a task is the model's primary metric over its expert's on the same
split. The experts' numbers come from (in this order of preference, per `reference`): a report of
the experts on this split (`python -m neuroflow test` of an `ExpertsModule`), what the manifest
recorded at fit time, or an evaluation of the experts run here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from neuroflow.evaluation.expert_heads_module import Reference
from neuroflow.evaluation.report import load_report, metrics_from_logged

if TYPE_CHECKING:
    from neuroflow.evaluation.merge_module import MergeModule

REFERENCE_HELP = "manifest | evaluate | <experts report dir or report.json>"


def expert_reference(
    trainer: Trainer, model: "MergeModule", datamodule: LightningDataModule, stage: str, reference: str
) -> Reference:
    """The experts' metrics on `stage` (`val` or `test`), the normalizer of the merged scores.

    Args:
        trainer: runs the experts' evaluation when needed.
        model: the MergeModule (its experts and tasks).
        datamodule: the evaluation data.
        stage: `val` or `test`.
        reference: `manifest` (what the manifest recorded; experts without it are evaluated here),
            `evaluate` (always score the experts on this run's data), or the path of an experts
            report (`python -m neuroflow test` with an ExpertsModule and a `report_dir`).
    """
    if reference not in ("manifest", "evaluate"):
        report = load_report(reference)
        if report["split"] == ("test" if stage == "test" else "validation"):
            found = {t: e["metrics"] for t, e in report["tasks"].items() if t in model.task_names}
            missing = [t for t in model.task_names if t not in found]
            if missing:
                raise ValueError(f"reference report {reference} has no metrics for task(s) {missing}")
            return found, {t: f"report:{reference}" for t in found}
        # A report of the other split (e.g. the experts' test report during a search): the
        # validation numbers come from the manifest, as with `manifest`.
        reference = "manifest"
    found, source = model.reference_metrics(stage) if reference == "manifest" else ({}, {})
    missing = [t for t in model.task_names if model.task_specs[t].primary_metric not in found.get(t, {})]
    if missing:
        from neuroflow.evaluation.experts_module import ExpertsModule

        rank_zero_info(f"evaluating the experts of {missing} on {stage} for the normalized scores")
        experts = ExpertsModule(experts=model.expert_set.source, tasks=[model.task_specs[t] for t in model.task_names])
        run = trainer.test if stage == "test" else trainer.validate
        run(experts, datamodule=datamodule, verbose=False)
        evaluated = metrics_from_logged(experts.last_metrics[stage], stage, experts.task_names)
        for task in missing:
            found[task], source[task] = evaluated[task], "evaluated"
        del experts
    return found, source
