"""`MergeModule`: scores the experts' merged backbone, each task through its own expert's head.

The module evaluates; it does not merge. It holds a `neuroflow.experts.merger.Merger` (experts +
base + routing) and loads the `MergedWeights` it returns (`use`): the merge happens on first use
(`merge()`, or `setup` before validate/test), on every process (deterministic, so all DDP ranks hold
the same weights). The experts are read lazily tensor by tensor (LoRA adapters are turned into
dense task vectors once), so re-merging for another candidate of a validation search reads no
more than one tensor of each expert at a time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule

from neuroflow.data.task_spec import TaskSpec
from neuroflow.evaluation.expert_heads_module import ExpertHeadsModule
from neuroflow.experts.merger import MergedWeights, Merger
from neuroflow.merging import MergeMethod, NeuroMerging, routing_from_module
from neuroflow.merging.search import check_search_keys, expand_grid


class MergeModule(ExpertHeadsModule):
    """Merges the experts' backbones into one and evaluates it with each expert's head.

    Args:
        experts: an experts directory (manifest), or a list of expert folders; the experts of the
            evaluated `tasks` are merged.
        method: the merge method (`class_path` + `init_args` in YAML), e.g.
            `{class_path: neuroflow.merging.NeuroMerging, init_args: {mask_rate: 0.8}}`;
            None = NeuroMerging with its defaults (Lite: lambda_1 0, lambda_2 auto).
        tasks: the tasks to merge and evaluate, each with an expert; filled by the CLI from `data`.
        search: a validation grid over the method's hyperparameters (e.g.
            `{lambda_1: [0.0, 0.5, 1.0], lambda_2: [1.0, 2.0]}`); `python -m neuroflow merge` scores
            each candidate on the validation splits and tests the best. None = the method as given.
        exclude: names or glob patterns of backbone tensors not to merge (kept pre-trained).
        fast_search: score candidates that differ only in coefficients that scale the update
            (NeuroMerging's lambda_1/lambda_2, the `scaling` of TIES/TA/DARE) from basis merges
            instead of merging each one (costs one or two extra copies of the backbone weights;
            the chosen candidate is merged again exactly).
        report_dir: where `test` writes `report.{json,md,png}`; None = no report files (the merge
            command writes its own into its output directory).
        backbone_kwargs: extra `from_pretrained` arguments for the base model.
        base: the base model (folder or hub id). Required when `experts` lists checkpoints made
            outside neuroflow (Hugging Face model folders, hub ids, peft adapter folders): those
            are merged out of core by `python -m neuroflow merge` into a sharded model folder.
            With neuroflow experts it must be the base they were trained from (same fingerprint).
    """

    report_kind = "merged"

    def __init__(
        self,
        experts: str | list[str] = "runs/experts",
        method: MergeMethod | None = None,
        tasks: list[TaskSpec] | None = None,
        search: dict[str, list[Any]] | None = None,
        exclude: list[str] | None = None,
        fast_search: bool = True,
        report_dir: str | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
        base: str | None = None,
    ) -> None:
        method = method if method is not None else NeuroMerging()
        if not isinstance(method, MergeMethod):
            raise TypeError(
                f"model.method must be a neuroflow.merging.MergeMethod (class_path + init_args), "
                f"got {type(method).__name__}"
            )
        if search:
            # A wrong grid key must fail now, not after the experts are loaded and merged.
            check_search_keys(method, search)
            expand_grid(search)
        self.base = base
        self.external = external_checkpoints(experts)
        if self.external:
            # Checkpoints from elsewhere are merged disk to disk by the merge command; nothing is
            # loaded here (no heads to evaluate with, and the model may not fit in memory).
            if not base:
                raise ValueError("model.base is required to merge checkpoints made outside neuroflow "
                                 f"(experts {self.external})")
            LightningModule.__init__(self)
            self.method, self.search, self.exclude = method, dict(search) if search else None, exclude
            self.experts_refs = list(experts)
            return
        super().__init__(experts=experts, tasks=tasks, report_dir=report_dir, backbone_kwargs=backbone_kwargs,
                         base=base)
        self.method = method
        self.search = dict(search) if search else None
        self.exclude = list(exclude) if exclude else None
        self.fast_search = fast_search
        # Checkpoints and loggers get plain data, not the method object.
        self.hparams["method"] = {"class_path": _class_path(method), "init_args": method.hparams()}
        self._merger: Merger | None = None
        self.merged: MergedWeights | None = None
        self.merge_info: dict[str, Any] = {}

    @property
    def merger(self) -> Merger:
        """The merge step for these experts (built on first use: it copies the base weights)."""
        if self._merger is None:
            self._merger = Merger(self.expert_set, self.base_state(), routing=routing_from_module(self.hf_model),
                                  exclude=self.exclude)
        return self._merger

    def merge(self, method: MergeMethod | None = None, progress: Any = None) -> dict[str, Any]:
        """Merge the experts with `method` (default `self.method`) and evaluate with the result.

        Args:
            method: the method to merge with; it becomes `self.method`.
            progress: per-tensor progress hook passed to the engine (e.g. a tqdm bar).

        Returns:
            the engine's info (method, hyperparameters, statistics, routing counts) plus `seconds`.
        """
        self.use(self.merger.merge(method if method is not None else self.method, progress))
        return self.merge_info

    def use(self, merged: MergedWeights) -> None:
        """Evaluate with `merged` from now on (its weights go into the backbone)."""
        self.load_backbone_state_dict(merged.state_dict)
        self.method = merged.method
        self.merged = merged
        self.merge_info = merged.info
        self.hparams["method"] = merged.method_config()

    @property
    def is_merged(self) -> bool:
        """Whether the backbone holds a merge with the current `self.method`."""
        return self.merged is not None and self.merged.method is self.method

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if not self.is_merged:
            self.merge()

    def report_name(self) -> str:
        return self.method.name + ("_search" if self.search else "")

    def report_model_info(self) -> dict[str, Any]:
        return {
            **super().report_model_info(),
            "method": {"class_path": _class_path(self.method), "init_args": self.method.hparams()},
            "uses_data": bool(getattr(self.method, "uses_data", False)),
            "merge_info": self.merge_info,
        }


def _is_neuroflow_expert(ref: str) -> bool:
    path = Path(ref)
    return (path / "expert.json").is_file() or (path.suffix == ".json" and path.is_file())


def external_checkpoints(experts: str | list[str]) -> list[str]:
    """The references in a list of experts that are not neuroflow experts (model folders, hub ids,
    adapters); empty for an experts directory or neuroflow expert folders.

    Raises:
        ValueError: a list mixing both kinds.
    """
    if isinstance(experts, (str, Path)):
        return []
    refs = [str(r) for r in experts]
    external = [r for r in refs if not _is_neuroflow_expert(r)]
    if external and len(external) != len(refs):
        raise ValueError(f"model.experts mixes neuroflow experts and other checkpoints ({external}); "
                         "merge one kind at a time")
    return external


def _class_path(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"
