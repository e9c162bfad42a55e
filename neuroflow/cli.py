"""Deprecated location: moved to `neuroflow.commands.cli`."""

import warnings

from neuroflow.commands.cli import NeuroflowCLI, main  # noqa: F401,E402

warnings.warn("neuroflow.cli moved to neuroflow.commands.cli", DeprecationWarning, stacklevel=2)
