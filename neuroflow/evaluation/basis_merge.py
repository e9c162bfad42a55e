"""Deprecated location: basis (fast) search merges live in `neuroflow.merging.basis`."""

import warnings

from neuroflow.merging.basis import BasisMerges, supports  # noqa: F401

warnings.warn("neuroflow.evaluation.basis_merge moved to neuroflow.merging.basis", DeprecationWarning, stacklevel=2)
