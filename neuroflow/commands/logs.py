"""Logging of the command line: one `neuroflow` logger, configured once by the entry point.

`--quiet` shows warnings and errors only (no progress), `--verbose` adds debug lines and the full
details of errors; both are accepted on every subcommand (`pop_global_flags`). Child processes
(the recipe's subprocess launcher) inherit the level through `$NEUROFLOW_LOG_LEVEL`.

Known noise is silenced here: Lightning's advertising tips and torch's `LeafSpec` deprecation
raised from inside Lightning; progress bars of Hugging Face libraries where no one watches them.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

LEVEL_ENV = "NEUROFLOW_LOG_LEVEL"
_LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric")
_RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
_BOOL_WORDS = {"true", "false", "yes", "no", "1", "0", "on", "off", "null", "none"}


def pop_global_flags(argv: list[str]) -> tuple[list[str], int | None]:
    """Remove `--quiet` / `--verbose` from anywhere in `argv`.

    `test` and `validate` have Lightning's own `--verbose BOOL` (print the metrics table): a
    `--verbose` followed by a boolean word, or written `--verbose=...`, is left for it.

    Returns:
        the remaining arguments and the level asked for (None: neither flag).
    """
    rest: list[str] = []
    level: int | None = None
    for i, arg in enumerate(argv):
        following = argv[i + 1].lower() if i + 1 < len(argv) else ""
        if arg == "--quiet":
            level = logging.WARNING
        elif arg == "--verbose" and following not in _BOOL_WORDS:
            level = logging.DEBUG
        else:
            rest.append(arg)
    return rest, level


class _ConsoleHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a record arrives, so that redirected or teed
    streams (pytest's capture, a recipe stage's log file) receive the log lines too."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # noqa: ANN001
        pass  # always the current sys.stderr


class _Formatter(logging.Formatter):
    """`[neuroflow] message` (`warning: ` for warnings); errors as written by the caller
    (`neuroflow merge: error: ...`); with `--verbose`, time, level and logger name."""

    def __init__(self, verbose: bool) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
        self.verbose = verbose

    def format(self, record: logging.LogRecord) -> str:
        if self.verbose:
            return super().format(record)
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        if record.levelno >= logging.ERROR:
            return text
        if record.levelno >= logging.WARNING:
            return f"[neuroflow] warning: {text}"
        return f"[neuroflow] {text}"


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


_DROP_TIPS = _DropTips()


def silence_known_noise() -> None:
    """Drop messages that tell a neuroflow user nothing, once per process (idempotent)."""
    for name in _RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if _DROP_TIPS not in logger.filters:
            logger.addFilter(_DROP_TIPS)
    # torch deprecated `LeafSpec`; Lightning still constructs it (lightning/pytorch/utilities/_pytree.py).
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)


def disable_library_progress_bars() -> None:
    """Hugging Face libraries' own bars (weight loading, dataset maps, shard writing): off where
    no one watches a terminal, or under `--quiet`."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    # Modules imported before this call read those variables already.
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()
    if "huggingface_hub" in sys.modules:
        sys.modules["huggingface_hub"].utils.disable_progress_bars()
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()


def level_from_env(default: int = logging.INFO) -> int:
    """The level in `$NEUROFLOW_LOG_LEVEL` (a name such as `WARNING`), else `default`."""
    value = os.environ.get(LEVEL_ENV, "").strip().upper()
    level = logging.getLevelName(value) if value else default
    return level if isinstance(level, int) else default


def configure_logging(level: int | None = None) -> int:
    """Set up the `neuroflow` logger (console handler, level) and silence known noise.

    Calling it again replaces the earlier set-up (one handler, never two).

    Args:
        level: a `logging` level; None: `$NEUROFLOW_LOG_LEVEL`, else INFO.

    Returns:
        the level in effect.
    """
    from neuroflow.progress import interactive

    level = level_from_env() if level is None else level
    logger = logging.getLogger("neuroflow")
    for handler in [h for h in logger.handlers if isinstance(h, _ConsoleHandler)]:
        logger.removeHandler(handler)
    handler = _ConsoleHandler()
    handler.setFormatter(_Formatter(verbose=level <= logging.DEBUG))
    logger.addHandler(handler)
    logger.setLevel(level)
    # Lightning's own INFO lines (device summary, model summary) follow --quiet too.
    for name in _LIGHTNING_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING if level > logging.INFO else logging.INFO)
    silence_known_noise()
    if level > logging.INFO or not interactive():
        disable_library_progress_bars()
    return level



def ensure_configured() -> None:
    """Configure logging unless the entry point already did (a command called directly, e.g.
    from Python or a test, still reports its errors on stderr)."""
    if not any(isinstance(h, _ConsoleHandler) for h in logging.getLogger("neuroflow").handlers):
        configure_logging(logging.getLogger("neuroflow").level or None)
