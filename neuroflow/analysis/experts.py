"""Analysing an experts collection: load its base backbone once, read the experts lazily.

The base is loaded as the model code loads it (`neuroflow.models.backbone.load_backbone`, with the
experts' recorded family), its plain state dict taken as `MultiTaskModule.backbone_state_dict`
takes it (tied aliases dropped), checked against the experts' fingerprint, and routed by module
type (`routing_from_module`), exactly as `MergeModule` routes a merge. No heads, no Lightning.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from neuroflow.analysis.analyze import analyze_task_vectors
from neuroflow.experts.expert_set import ExpertSet
from neuroflow.experts.source import ManifestExperts
from neuroflow.merging.routing import Route, routing_from_module
from neuroflow.models.backbone import dedupe_tied, load_backbone


def load_base(experts: ExpertSet, backbone_kwargs: Mapping[str, Any] | None = None) -> tuple[dict[str, Tensor], dict[str, Route]]:
    """The experts' pre-trained backbone weights (plain names) and their merge routing.

    Args:
        experts: the checked experts.
        backbone_kwargs: extra `from_pretrained` arguments (`dtype`, `revision`).

    Raises:
        ExpertInputError: the base on disk is not the one the experts were trained from.
    """
    model, _ = load_backbone(experts.base_model, experts.family, **dict(backbone_kwargs or {}))
    state = {name: tensor.detach() for name, tensor in dedupe_tied(model.state_dict()).items()}
    experts.check_base(state)
    return state, routing_from_module(model)


def expert_set_of(experts: str | Path | Sequence[str | Path] | ExpertSet, tasks: Sequence[str] | None = None) -> ExpertSet:
    """An `ExpertSet` from a directory, a single expert folder, a list of folders, or itself.

    Args:
        experts: an experts directory (its manifest), expert folders / `expert.json` files, or a set.
        tasks: the tasks to keep (None = every expert's).
    """
    if isinstance(experts, ExpertSet):
        return experts
    if isinstance(experts, (str, Path)):
        # One expert's own folder is a list of one, not a collection.
        single = Path(experts).is_file() or (Path(experts) / "expert.json").is_file()
        return ExpertSet([experts] if single else experts, tasks)
    return ExpertSet(list(experts), tasks)


def analyze_experts(
    experts: str | Path | Sequence[str | Path] | ExpertSet,
    tasks: Sequence[str] | None = None,
    mask_rate: float = 0.8,
    exclude: Sequence[str] | None = None,
    backbone_kwargs: Mapping[str, Any] | None = None,
    progress: Callable[[str], Any] | None = None,
) -> dict[str, Any]:
    """`analyze_task_vectors` over an experts collection, with the merge's base and routing.

    Args:
        experts: an experts directory, expert folders, or an `ExpertSet`.
        tasks: the tasks to analyse (None = every expert's).
        mask_rate: the trim's fraction dropped by magnitude, in [0, 1).
        exclude: names or glob patterns of backbone tensors left out (as the merge's `exclude`).
        backbone_kwargs: extra `from_pretrained` arguments for the base model.
        progress: called with each tensor's name after it is analysed.

    Returns:
        the analysis (see `analyze_task_vectors`) with a `source` entry naming the base and experts.
    """
    expert_set = expert_set_of(experts, tasks)
    base, routing = load_base(expert_set, backbone_kwargs)
    source = ManifestExperts(expert_set, base)
    analysis = analyze_task_vectors(base, source, tasks=expert_set.tasks, mask_rate=mask_rate, routing=routing,
                                    exclude=exclude, progress=progress)
    analysis["source"] = {
        "base_model": expert_set.base_model,
        "base_fingerprint": expert_set.fingerprint,
        "family": expert_set.family,
        "experts": expert_set.describe(),
    }
    return analysis
