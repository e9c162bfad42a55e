"""A stage's output, on the console and in its own log file (`<output_dir>/logs/<stage>.log`).

The in-process launcher runs every stage in one Python, so a stage's output is whatever reaches
`sys.stdout`/`sys.stderr` while it runs, plus the logging handlers that hold those streams
(Lightning's own handler keeps the stream it found at import). `tee_output` copies all of it
into the log file. Progress bars redraw their line with `\\r` and colour it with escape codes;
the file keeps each line's final state, without the codes, so it reads like a plain log.
"""

from __future__ import annotations

import io
import logging
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class _Tee(io.TextIOBase):
    """A text stream that writes to `console` and, line by line, to a shared log file."""

    def __init__(self, console: TextIO, log: TextIO, lock: threading.Lock) -> None:
        super().__init__()
        self.console, self.log, self.lock = console, log, lock
        self._line = ""

    def write(self, text: str) -> int:
        self.console.write(text)
        with self.lock:
            *complete, self._line = (self._line + text).split("\n")
            for line in complete:
                self.log.write(_ANSI.sub("", line.rsplit("\r", 1)[-1]) + "\n")
            # A bar's redraw replaces the line: only what follows the last \r is still on screen.
            self._line = self._line.rsplit("\r", 1)[-1]
        return len(text)

    def flush(self) -> None:
        self.console.flush()
        with self.lock:
            self.log.flush()

    def finish(self) -> None:
        """Write a last unterminated line (a bar's final state) to the log."""
        with self.lock:
            if self._line.strip():
                self.log.write(_ANSI.sub("", self._line) + "\n")
            self._line = ""
            self.log.flush()

    def isatty(self) -> bool:  # bars decide how to draw from the console, not the file
        return self.console.isatty()

    def fileno(self) -> int:
        return self.console.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.console, "encoding", "utf-8")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.console, name)


def _stream_handlers() -> list[logging.StreamHandler]:
    loggers = [logging.getLogger(), *(obj for obj in logging.Logger.manager.loggerDict.values()
                                      if isinstance(obj, logging.Logger))]
    return [h for lg in loggers for h in lg.handlers
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]


@contextmanager
def tee_output(log_path: str | Path) -> Iterator[None]:
    """Copy everything printed or logged to the console inside the block into `log_path`.

    Args:
        log_path: the stage's log file (replaced; its folder is created).
    """
    path = Path(log_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as log:
        lock = threading.Lock()
        out, err = sys.stdout, sys.stderr
        tee_out, tee_err = _Tee(out, log, lock), _Tee(err, log, lock)
        swapped: list[tuple[logging.StreamHandler, TextIO]] = []
        for handler in _stream_handlers():
            original = handler.stream
            if original is out or original is err:
                try:
                    handler.setStream(tee_out if original is out else tee_err)
                except AttributeError:
                    continue  # a handler whose stream follows sys.stderr by itself
                swapped.append((handler, original))
        sys.stdout, sys.stderr = tee_out, tee_err
        try:
            yield
        finally:
            sys.stdout, sys.stderr = out, err
            for handler, original in swapped:
                handler.setStream(original)
            tee_out.finish()
            tee_err.finish()
