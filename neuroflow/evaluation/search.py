"""Deprecated location: the validation search lives in `neuroflow.merging.search`."""

import warnings

from neuroflow.merging.search import *  # noqa: F401,F403
from neuroflow.merging.search import SearchResult, check_search_keys, expand_grid, grid_search, with_params  # noqa: F401

warnings.warn("neuroflow.evaluation.search moved to neuroflow.merging.search", DeprecationWarning, stacklevel=2)
