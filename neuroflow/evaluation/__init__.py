"""Evaluation: merge experts (`MergeModule`, `python -m neuroflow merge`), score merged models,
the experts or the pre-trained backbone (`python -m neuroflow test`), reports and validation search."""

from neuroflow.evaluation.expert_heads_module import ExpertHeadsModule, PretrainedModule
from neuroflow.evaluation.expert_set import ExpertInputError, ExpertSet
from neuroflow.evaluation.manifest_experts import ManifestExperts
from neuroflow.evaluation.experts_module import ExpertsModule
from neuroflow.evaluation.merge_module import MergeModule
from neuroflow.evaluation.merged_model import MergedModel, load_merged, read_card, save_merged
from neuroflow.evaluation.report import build_report, combine_reports, load_report, write_report
from neuroflow.merging.search import expand_grid, grid_search

__all__ = [
    "ExpertHeadsModule",
    "ExpertInputError",
    "ExpertSet",
    "ExpertsModule",
    "ManifestExperts",
    "MergeModule",
    "MergedModel",
    "PretrainedModule",
    "build_report",
    "combine_reports",
    "expand_grid",
    "grid_search",
    "load_merged",
    "load_report",
    "read_card",
    "save_merged",
    "write_report",
]
