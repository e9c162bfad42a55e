"""Deprecated location: `ManifestExperts` lives in `neuroflow.experts.source`."""

import warnings

from neuroflow.experts.source import ManifestExperts  # noqa: F401

warnings.warn("neuroflow.evaluation.manifest_experts moved to neuroflow.experts.source", DeprecationWarning, stacklevel=2)
