"""`MergeModule`: the experts' shared backbone merged with a `neuroflow.merging` method, each task
scored through the merged backbone and its own expert's head.

The merge happens on first use (`merge()`, or `setup` before validate/test), on every process
(deterministic, so all DDP ranks hold the same weights). The experts are read lazily tensor by
tensor from their safetensors files (LoRA adapters are turned into dense task vectors, scale
alpha / r, once), so re-merging for another candidate of a validation search reads no more than
one tensor of each expert at a time, and the pre-trained weights are copied only once.
"""

from __future__ import annotations

import time
from typing import Any

from torch import Tensor

from neuroflow.data.task_spec import TaskSpec
from neuroflow.evaluation.expert_heads_module import ExpertHeadsModule
from neuroflow.evaluation.manifest_experts import ManifestExperts
from neuroflow.merging.search import check_search_keys, expand_grid
from neuroflow.merging import MergeMethod, NeuroMerging, routing_from_module
from neuroflow.merging import merge as merge_experts


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
        super().__init__(experts=experts, tasks=tasks, report_dir=report_dir, backbone_kwargs=backbone_kwargs)
        self.method = method
        self.search = dict(search) if search else None
        self.exclude = list(exclude) if exclude else None
        self.fast_search = fast_search
        # Checkpoints and loggers get plain data, not the method object.
        self.hparams["method"] = {"class_path": _class_path(method), "init_args": method.hparams()}
        self._source: ManifestExperts | None = None
        self._merged_with: MergeMethod | None = None
        self.merge_info: dict[str, Any] = {}

    def experts_source(self) -> ManifestExperts:
        """The experts as a lazily read task-vector source (built once, reused by every merge)."""
        if self._source is None:
            self._source = ManifestExperts(self.expert_set, self.base_state())
        return self._source

    def run_engine(self, method: MergeMethod, progress: Any = None) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Merge the experts with `method` without touching the module: (merged weights, engine info)."""
        result = merge_experts(
            self.base_state(),
            self.experts_source(),
            method,
            routing=routing_from_module(self.hf_model),
            exclude=self.exclude,
            progress=progress,
        )
        return result.state_dict, result.info

    def merge(self, method: MergeMethod | None = None, progress: Any = None) -> dict[str, Any]:
        """Merge the experts with `method` (default `self.method`) into the module's backbone.

        Args:
            method: the method to merge with; it becomes `self.method`.
            progress: per-tensor progress hook passed to the engine (e.g. a tqdm bar).

        Returns:
            the engine's info (method, hyperparameters, statistics, routing counts) plus `seconds`.
        """
        method = method if method is not None else self.method
        start = time.perf_counter()
        weights, info = self.run_engine(method, progress)
        self.use_weights(weights, method, {**info, "seconds": round(time.perf_counter() - start, 3)})
        return self.merge_info

    def use_weights(self, weights: dict[str, Tensor], method: MergeMethod, info: dict[str, Any]) -> None:
        """Load merged `weights` (made with `method`) into the backbone and record them as the merge."""
        self.load_backbone_state_dict(weights)
        self.method = method
        self._merged_with = method
        self.merge_info = info
        self.hparams["method"] = {"class_path": _class_path(method), "init_args": method.hparams()}

    @property
    def is_merged(self) -> bool:
        """Whether the backbone holds a merge with the current `self.method`."""
        return self._merged_with is not None and self._merged_with is self.method

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
            "merge_info": self.merge_info,
        }


def _class_path(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"
