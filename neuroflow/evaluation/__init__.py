"""Evaluation: only scoring. The evaluation LightningModules (a merge of the experts, a saved merged
model, the experts themselves, the pre-trained backbone with the experts' heads), the normalizing
reference, and the one report writer (json/md/png) that merge, test and run use."""

import warnings as _warnings

from neuroflow.evaluation.expert_heads_module import ExpertHeadsModule, PretrainedModule
from neuroflow.experts.expert_set import ExpertInputError
from neuroflow.evaluation.experts_module import ExpertsModule
from neuroflow.evaluation.lm_eval_tasks import LmEvalCallback  # lm_eval itself is imported on use
from neuroflow.evaluation.merge_module import MergeModule
from neuroflow.evaluation.merged_model import MergedModel, load_merged, read_card, save_merged
from neuroflow.evaluation.report import build_report, combine_reports, load_report, write_report
from neuroflow.merging.search import expand_grid, grid_search

__all__ = [
    "ExpertHeadsModule",
    "ExpertInputError",
    "ExpertsModule",
    "LmEvalCallback",
    "MergeModule",
    "MergedModel",
    "PretrainedModule",
    "build_report",
    "combine_reports",
    "load_merged",
    "load_report",
    "read_card",
    "save_merged",
    "write_report",
]

# Moved in 0.2; the old names keep working for one release.
_MOVED = {
    "ExpertSet": ("neuroflow.experts.expert_set", "ExpertSet"),
    "ManifestExperts": ("neuroflow.experts.source", "ManifestExperts"),
    "expand_grid": ("neuroflow.merging.search", "expand_grid"),
    "grid_search": ("neuroflow.merging.search", "grid_search"),
}


def __getattr__(name: str):
    if name in _MOVED:
        import importlib

        module, attr = _MOVED[name]
        _warnings.warn(f"neuroflow.evaluation.{name} moved to {module}.{attr}", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'neuroflow.evaluation' has no attribute {name!r}")
