"""Deprecated location: the recipe command lives in `neuroflow.commands.run`."""

import warnings

from neuroflow.commands.run import build_parser, main  # noqa: F401

warnings.warn("neuroflow.pipeline.command moved to neuroflow.commands.run", DeprecationWarning, stacklevel=2)
