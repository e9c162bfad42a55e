"""Deprecated location: `ExpertSet` lives in `neuroflow.experts.expert_set`."""

import warnings

from neuroflow.experts.expert_set import ExpertInputError, ExpertSet  # noqa: F401

warnings.warn("neuroflow.evaluation.expert_set moved to neuroflow.experts.expert_set", DeprecationWarning, stacklevel=2)
