"""Deprecated location: the report callback lives in `neuroflow.evaluation.report_callback`."""

import warnings

from neuroflow.evaluation.report_callback import ReportCallback as TestReport  # noqa: F401

warnings.warn("neuroflow.pipeline.test_report moved to neuroflow.evaluation.report_callback", DeprecationWarning,
              stacklevel=2)
