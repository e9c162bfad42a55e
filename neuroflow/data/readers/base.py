"""The `Reader` base class: parses files that no `datasets` builder reads directly.

A reader is configured from a task's `source` mapping: `path` names it, `data_files` maps each
source split to its file (or, for readers that zip several files, to a mapping of file role ->
file), and every other key is a constructor argument. Registering a reader is subclassing `Reader`
with a `name`; a reader outside neuroflow is referred to by its class path.
"""

from __future__ import annotations

import gzip
import importlib
import inspect
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from neuroflow.class_paths import import_path

# A split's files: one path, or file role -> path (e.g. {"text": ..., "label": ...}).
SplitFiles = Path | dict[str, Path]
Columns = dict[str, list[Any] | np.ndarray]


class Reader(ABC):
    """Reads the files of one split into columns (lists or numpy arrays of equal length).

    Subclasses set `name` (the value of `source.path` that selects them) and, when a split is
    made of several files, `file_roles` (the keys expected under each split in `data_files`).
    """

    name: ClassVar[str] = ""
    file_roles: ClassVar[tuple[str, ...] | None] = None

    @abstractmethod
    def read_split(self, files: SplitFiles, task: str) -> Columns:
        """Parse one split.

        Args:
            files: the split's resolved file, or role -> file for multi-file readers.
            task: the task name, for error messages.
        """

    def read(self, data_files: Mapping[str, SplitFiles], task: str) -> dict[str, Columns]:
        """Parse every split: source split name -> columns."""
        return {split: self.read_split(files, task) for split, files in data_files.items()}


def read_text(path: Path, encoding: str = "utf-8", errors: str = "strict") -> str:
    """The decoded content of a text file, gunzipped when it ends with `.gz`."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    try:
        return raw.decode(encoding, errors)
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{str(path)!r}: not valid {encoding} at byte {err.start}; set `source.encoding` "
            f"(e.g. latin-1, cp1252) or `source.errors: replace` in the task spec"
        ) from err


def split_lines(text: str, skip_blank: bool = False) -> list[tuple[int, str]]:
    """(1-based line number, line) pairs, splitting on "\\n" only.

    `str.splitlines` would also break on characters such as U+0085 or U+2028, which occur inside
    real text items, so only "\\n" separates records here; a final "\\n" ends the last line rather
    than starting an empty one, and a "\\r" before it (CRLF files) is dropped.
    """
    parts = text.split("\n")
    if parts and parts[-1] == "":
        parts.pop()
    lines = [(i + 1, p[:-1] if p.endswith("\r") else p) for i, p in enumerate(parts)]
    if skip_blank:
        lines = [(n, line) for n, line in lines if line.strip()]
    return lines


def _all_readers(cls: type[Reader] = Reader) -> dict[str, type[Reader]]:
    found: dict[str, type[Reader]] = {}
    for sub in cls.__subclasses__():
        if sub.name:
            found[sub.name] = sub
        found.update(_all_readers(sub))
    return found


def known_readers() -> list[str]:
    """Names of the registered readers (importing `neuroflow.data.readers` registers the built-ins)."""
    importlib.import_module("neuroflow.data.readers")
    return sorted(_all_readers())


def find_reader(path: str) -> type[Reader] | None:
    """The reader class named by `source.path`, or None when `path` is not a reader.

    Args:
        path: a reader name (`delimited`) or a class path (`my_pkg.readers.MyReader`).

    Raises:
        ValueError: a class path that imports but is not a `Reader` subclass.
    """
    importlib.import_module("neuroflow.data.readers")
    readers = _all_readers()
    if path in readers:
        return readers[path]
    # Hub ids contain "/"; a dotted name without one may be a user reader's class path.
    if "." in path and "/" not in path:
        obj = import_path(path)
        if obj is None:
            return None
        if not (inspect.isclass(obj) and issubclass(obj, Reader)):
            raise ValueError(f"source.path {path!r} is not a neuroflow.data.readers.Reader subclass")
        return obj
    return None


def build_reader(cls: type[Reader], options: Mapping[str, Any], task: str) -> Reader:
    """Instantiate a reader from the task's `source` options, refusing unknown ones by name."""
    params = inspect.signature(cls.__init__).parameters
    accepted = [n for n in params if n != "self"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"task {task!r}: source option(s) {unknown} are not accepted by reader {cls.name or cls.__name__!r} "
            f"(accepted: {accepted})"
        )
    try:
        return cls(**options)
    except (TypeError, ValueError) as err:
        raise ValueError(f"task {task!r}: reader {cls.name or cls.__name__!r}: {err}") from err


def is_local_path(value: str | os.PathLike) -> bool:
    return not str(value).startswith(("http://", "https://", "hf://", "s3://", "gs://"))
