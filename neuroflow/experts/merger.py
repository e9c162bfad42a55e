"""`Merger`: experts + a merge method -> a `MergedWeights` (the merged backbone and the experts' heads).

This is the step between the experts and the evaluation: it holds what every merge of one expert
set shares (the checked experts, the pre-trained weights, the routing of the backbone's tensors,
the lazily read task vectors) and returns a value for each method; it neither evaluates nor
writes. The evaluation module loads a `MergedWeights` into its backbone (`MergeModule.use`); the
merge command saves it. No Lightning here.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from neuroflow.experts.expert_set import ExpertSet
from neuroflow.experts.source import ManifestExperts
from neuroflow.merging.base import MergeMethod
from neuroflow.merging.engine import merge as merge_engine
from neuroflow.merging.routing import Route


@dataclass
class MergedWeights:
    """What one merge produced.

    Args:
        state_dict: the merged backbone weights (the base's keys, shapes and dtypes).
        method: the method that produced them.
        info: the engine's JSON-ready record (method, hyperparameters, statistics, routing) plus
            `seconds`.
        tasks: the merged tasks, in order (each keeps its own expert's head).
    """

    state_dict: dict[str, Tensor]
    method: MergeMethod
    info: dict[str, Any] = field(default_factory=dict)
    tasks: list[str] = field(default_factory=list)

    @property
    def class_path(self) -> str:
        return f"{type(self.method).__module__}.{type(self.method).__qualname__}"

    def method_config(self) -> dict[str, Any]:
        """The method as a `class_path` + `init_args` config (what a YAML names)."""
        return {"class_path": self.class_path, "init_args": self.method.hparams()}


class Merger:
    """Merges one checked expert set into its base, once per method asked for.

    Args:
        experts: the experts (checked together, see `ExpertSet`).
        base: the pre-trained backbone weights (plain names), not modified.
        routing: tensor name -> route (from `routing_from_module` of the backbone).
        exclude: names or glob patterns of tensors kept pre-trained.
    """

    def __init__(
        self,
        experts: ExpertSet,
        base: Mapping[str, Tensor],
        routing: Mapping[str, Route | str] | None = None,
        exclude: Sequence[str] | None = None,
    ) -> None:
        self.experts = experts
        self.base = base
        self.routing = routing
        self.exclude = list(exclude) if exclude else None
        self._source: ManifestExperts | None = None

    @property
    def source(self) -> ManifestExperts:
        """The experts as a lazily read task-vector source (built once, reused by every merge)."""
        if self._source is None:
            self._source = ManifestExperts(self.experts, self.base)
        return self._source

    def merge(self, method: MergeMethod, progress: Any = None) -> MergedWeights:
        """Merge the experts with `method`.

        Args:
            method: the merge method.
            progress: per-tensor progress hook passed to the engine (e.g. a tqdm bar).
        """
        start = time.perf_counter()
        result = merge_engine(self.base, self.source, method, routing=self.routing, exclude=self.exclude,
                              progress=progress)
        info = {**result.info, "seconds": round(time.perf_counter() - start, 3)}
        return MergedWeights(result.state_dict, method, info, list(self.experts.tasks))

    def merge_fn(self, method: MergeMethod) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """`merge` as (weights, info), the form `neuroflow.merging.basis.BasisMerges` takes."""
        merged = self.merge(method)
        return merged.state_dict, merged.info
