"""Progress for every long step, in one style (tqdm), quiet under `--quiet` and in plain logs.

On a terminal a step shows a tqdm bar; without one (a log file, a SLURM job, a pipe) it writes
a line to the `neuroflow.progress` logger every `interval` seconds and one when it ends, so
logs stay readable; under `--quiet` (the `neuroflow` logger above INFO) it shows nothing.

```python
from neuroflow.progress import progress

with progress(total=len(names), desc="statistics (ties)", unit="tensor") as bar:
    for name in names:
        ...
        bar.update(1)
```

Nothing here imports the rest of neuroflow, so any module may use it.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

log = logging.getLogger("neuroflow.progress")

# Seconds between two progress lines in a log without a terminal.
LOG_INTERVAL_S = 30.0


def interactive(stream: Any = None) -> bool:
    """Whether `stream` (default: the current `sys.stderr`, where bars go) is a terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or stream-less replacements
        return False


def progress_enabled() -> bool:
    """False under `--quiet`: the `neuroflow` logger's level was set above INFO (an unconfigured
    logger, as in a notebook, keeps progress on)."""
    level = logging.getLogger("neuroflow").level
    return level == logging.NOTSET or level <= logging.INFO


def format_progress(desc: str, n: int, total: int | float | None, elapsed: float, unit: str = "it") -> str:
    """One progress line in tqdm's format, without the bar: `desc:  45% 45/100 [00:10<00:12, 4.50it/s]`."""
    from tqdm import tqdm

    total = None if total in (None, float("inf")) else int(total)
    if total:
        fmt = "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]"
    else:
        fmt = "{desc}: {n_fmt} [{elapsed}, {rate_fmt}]"
    return tqdm.format_meter(n, total, elapsed, prefix=desc, unit=unit, bar_format=fmt)


class LogProgress:
    """A tqdm-like counter that logs a line every `interval` seconds and when it closes.

    Args:
        iterable: iterate over it, counting each item (optional).
        total: the expected count (None: unknown).
        desc: what is being done, e.g. `merging (ties)`.
        unit: what is counted, e.g. `tensor`.
        interval: seconds between two lines.
    """

    def __init__(self, iterable: Iterable[Any] | None = None, total: int | None = None, desc: str = "",
                 unit: str = "it", interval: float = LOG_INTERVAL_S) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.total, self.desc, self.unit, self.interval = iterable, total, desc, unit, interval
        self.n = 0
        self.disable = False
        self._start = self._last = time.monotonic()
        self._closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            log.info("%s", format_progress(self.desc, self.n, self.total, now - self._start, self.unit))

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        """Accepted for tqdm compatibility; log lines carry no postfix."""

    def set_description(self, desc: str, refresh: bool = True) -> None:
        self.desc = desc

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        elapsed = time.monotonic() - self._start
        log.info("%s", format_progress(self.desc, self.n, self.total, elapsed, self.unit))

    def __iter__(self) -> Iterator[Any]:
        assert self.iterable is not None, "LogProgress was created without an iterable"
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress(iterable: Iterable[Any] | None = None, total: int | None = None, desc: str = "", unit: str = "it",
             enabled: bool = True, interval: float = LOG_INTERVAL_S) -> Any:
    """A progress counter for a long step: a tqdm bar on a terminal, log lines without one.

    The result has tqdm's `update(n)`, `close()`, iteration and `with` support, so it can be passed
    wherever a tqdm bar is expected (e.g. the merge engine's `progress=`).

    Args:
        iterable: iterate over it (optional; otherwise call `update`).
        total: expected count (defaults to `len(iterable)`).
        desc: what is being done.
        unit: what is counted.
        enabled: False shows nothing (e.g. not rank zero, or `--trainer.enable_progress_bar false`);
            `--quiet` also shows nothing.
        interval: seconds between log lines when there is no terminal.
    """
    from tqdm import tqdm

    if not enabled or not progress_enabled():
        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=True)
    if interactive():
        return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr)
    return LogProgress(iterable, total=total, desc=desc, unit=unit, interval=interval)
