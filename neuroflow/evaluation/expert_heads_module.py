"""A backbone with each expert's own task head: the base of the experts-based evaluation modules.

`ExpertHeadsModule` is a `MultiTaskModule` (same forward, `validation_step`/`test_step` and metric
code) built from an experts collection: the backbone is the experts' pre-trained base and each task
gets the head its expert trained. Subclasses change only the backbone weights: the experts'
(`ExpertsModule`), a merge of them (`MergeModule`), or none (`PretrainedModule`: the pre-trained
backbone with the experts' heads, the usual lower reference row).

With `report_dir` set, `test` writes `report.{json,md,png}` there (rank 0, after the metrics are
reduced across processes), normalizing by the experts' test metrics the manifest recorded.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

from neuroflow.data.task_spec import TaskSpec
from neuroflow.experts.expert_set import ExpertSet
from neuroflow.evaluation.report import build_report, metrics_from_logged, write_report
from neuroflow.evaluation.report_stats import confusions_of
from neuroflow.evaluation.tokenizer_check import fill_or_check_tokenizer
from neuroflow.experts.artifacts import load_expert_head
from neuroflow.hub import model_reference
from neuroflow.models.multitask_module import MultiTaskModule, as_task_specs

Reference = tuple[dict[str, dict[str, float]], dict[str, str]]


def fill_module_hparams(module: MultiTaskModule, **given: Any) -> None:
    """Make sure `module.hparams` holds every `MultiTaskModule` argument.

    Under LightningCLI, `save_hyperparameters` records the *subclass's* config (experts, method...),
    not the arguments the subclass passed to `MultiTaskModule.__init__`, which that class reads
    back from `hparams` (backbone, max_new_tokens, lora, ...).

    Args:
        module: the module, after `MultiTaskModule.__init__`.
        **given: the values the subclass passed; other arguments get their defaults.
    """
    params = inspect.signature(MultiTaskModule.__init__).parameters
    for name, param in params.items():
        if name in ("self", "tasks", "optimizer", "lr_scheduler"):
            continue
        value = given[name] if name in given else param.default
        if name not in module.hparams:
            module.hparams[name] = value


def task_names_of(tasks: list[TaskSpec] | list[Any] | None) -> list[str] | None:
    """Names of the requested tasks (specs, spec dicts or names), without resolving them."""
    if not tasks:
        return None
    return [t.name if isinstance(t, TaskSpec) else t["name"] if isinstance(t, dict) else str(t) for t in tasks]


class StageReports:
    """Report writing shared by the evaluation modules (mixed into a `MultiTaskModule`).

    Subclasses say what they are (`report_kind`, `report_name`, `report_model_info`) and where the
    experts' numbers come from (`reference_metrics`).
    """

    report_kind = "model"
    report_dir: str | None = None
    tokenizer_owner = "the evaluated model"

    def check_data_tokenizer(self, datamodule: Any) -> None:
        """Fill the data's tokenizer from this model's backbone where unset; refuse another one
        (`fill_or_check_tokenizer`). Checked once per data module."""
        if datamodule is None or getattr(self, "_tokenizer_checked", None) is datamodule:
            return
        fill_or_check_tokenizer(datamodule, self.hparams.backbone, self.tokenizer_owner)
        self._tokenizer_checked = datamodule

    def configure_callbacks(self) -> Any:
        # The earliest module hook of a Trainer run: it comes before the DataModule prepares
        # (tokenizes) the data, which must happen with the model's own tokenizer.
        self.check_data_tokenizer(getattr(self.trainer, "datamodule", None))
        return super().configure_callbacks()

    def _keep_confusions(self, stage: str) -> None:
        # Before the module's own epoch end computes and resets the metrics: the counts give
        # the report each task's number of examples and 95% interval.
        if not self.trainer.sanity_checking:
            self.last_confusions = {**getattr(self, "last_confusions", {}), stage: confusions_of(self, stage)}

    def on_validation_epoch_end(self) -> None:
        self._keep_confusions("val")
        super().on_validation_epoch_end()

    def on_test_epoch_end(self) -> None:
        self._keep_confusions("test")
        super().on_test_epoch_end()

    def report_name(self) -> str:
        return self.report_kind

    def report_model_info(self) -> dict[str, Any]:
        return {"kind": self.report_kind}

    def reference_metrics(self, stage: str) -> Reference:
        """(task -> the expert's metrics for `stage`, task -> where they come from)."""
        return {}, {}

    def build_stage_report(
        self, stage: str = "test", reference: Reference | None = None, extra: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The report of this module's last `stage` run (`val` or `test`).

        Args:
            stage: which logged metrics to report.
            reference: (task -> expert metrics, task -> source); default `reference_metrics(stage)`.
            extra: more top-level report entries (e.g. the validation search).
        """
        if stage not in self.last_metrics:
            raise RuntimeError(f"no {stage} metrics yet: run the Trainer's {'test' if stage == 'test' else 'validate'} first")
        metrics = metrics_from_logged(self.last_metrics[stage], stage, self.task_names)
        expert, source = reference if reference is not None else self.reference_metrics(stage)
        missing = [t for t in self.task_names if self.task_specs[t].primary_metric not in expert.get(t, {})]
        if missing:
            rank_zero_warn(
                f"no expert {stage} metrics for {missing}: their normalized scores are left empty "
                "(`python -m neuroflow merge` evaluates the experts; or test an ExpertsModule)"
            )
        trainer = self._trainer
        run = {"world_size": trainer.world_size, "num_nodes": trainer.num_nodes} if trainer is not None else {}
        return build_report(
            self.report_name(),
            metrics,
            primary={t: self.task_specs[t].primary_metric for t in self.task_names},
            expert_metrics=expert,
            expert_source=source,
            split="test" if stage == "test" else "validation",
            model=self.report_model_info(),
            extra={"run": run, **(extra or {})},
            confusions=getattr(self, "last_confusions", {}).get(stage),
        )

    def on_test_end(self) -> None:
        if self.report_dir is None or not self.trainer.is_global_zero:
            return
        paths = write_report(self.build_stage_report("test"), self.report_dir)
        rank_zero_info(f"report written to {Path(paths['json']).parent}")


class ExpertHeadsModule(StageReports, MultiTaskModule):
    """The experts' base model with each expert's head; subclasses set the backbone weights.

    Args:
        experts: an experts directory (manifest), or a list of expert folders.
        tasks: the tasks to evaluate, each with an expert; filled by the CLI from `data`
            (in Python: `datamodule.task_specs`); None = every expert's own task.
        report_dir: where `test` writes `report.{json,md,png}`; None = no report files.
        backbone_kwargs: extra `from_pretrained` arguments for the base model (`dtype`, `revision`).
        base: load the base from here instead of the path the experts recorded (it must have the
            experts' fingerprint, which is checked).
    """

    report_kind = "pretrained"
    tokenizer_owner = "the experts' base"

    def __init__(
        self,
        experts: str | list[str] = "runs/experts",
        tasks: list[TaskSpec] | None = None,
        report_dir: str | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
        base: str | None = None,
    ) -> None:
        expert_set = ExpertSet(experts, task_names_of(tasks))
        specs = as_task_specs(tasks) if tasks else expert_set.task_specs()
        expert_set.check_specs(specs)
        module_args = dict(
            backbone=base or expert_set.base_model, family=expert_set.family, head_dropout=0.0, backbone_kwargs=backbone_kwargs
        )
        super().__init__(tasks=specs, **module_args)
        fill_module_hparams(self, **module_args)
        self.expert_set = expert_set
        self.report_dir = report_dir
        self.base_fingerprint = expert_set.check_base(self.backbone_state_dict())
        for task in self.task_names:
            head = load_expert_head(expert_set[task].root, expert_set[task], task)
            if head is not None:
                self.heads[task] = head
        self._base_state: dict[str, Tensor] | None = None
        self.eval()

    def base_state(self) -> dict[str, Tensor]:
        """A private copy of the pre-trained backbone weights, made on first use (the module's own
        weights get overwritten by expert or merged weights)."""
        if self._base_state is None:
            self._base_state = {k: v.detach().clone() for k, v in self.backbone_state_dict().items()}
        return self._base_state

    def report_model_info(self) -> dict[str, Any]:
        return {
            "kind": self.report_kind,
            "base_model": self.expert_set.base_model,
            "base_fingerprint": self.base_fingerprint,
            # A `pkg://` name resolves only where that package is installed: where it was, and what.
            "base_model_ref": model_reference(self.expert_set.base_model, self.base_fingerprint),
            "experts": self.expert_set.describe(),
        }

    def reference_metrics(self, stage: str) -> Reference:
        recorded = self.expert_set.recorded_metrics(stage)
        return recorded, {task: "manifest" for task in recorded}


class PretrainedModule(ExpertHeadsModule):
    """The pre-trained backbone with each expert's own head (no expert or merged weights).

    Args:
        experts: an experts directory (manifest), or a list of expert folders.
        tasks: the tasks to evaluate, each with an expert; filled by the CLI from `data`.
        report_dir: where `test` writes `report.{json,md,png}`; None = no report files.
        backbone_kwargs: extra `from_pretrained` arguments for the base model.
    """

    report_kind = "pretrained"
