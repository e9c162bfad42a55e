"""Deprecated location: the merge command lives in `neuroflow.commands.merge`."""

import warnings

from neuroflow.commands.merge import run_merge, run_search  # noqa: F401
from neuroflow.evaluation.reference import expert_reference  # noqa: F401

warnings.warn("neuroflow.evaluation.merge_command moved to neuroflow.commands.merge", DeprecationWarning, stacklevel=2)
