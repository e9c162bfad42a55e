"""Deprecated location: moved to `neuroflow.commands.trainer`."""

import warnings

from neuroflow.commands.trainer import NeuroTrainer  # noqa: F401,E402

warnings.warn("neuroflow.trainer moved to neuroflow.commands.trainer", DeprecationWarning, stacklevel=2)
