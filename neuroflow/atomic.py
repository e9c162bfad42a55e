"""Atomic file-system writes: a reader (or a crash) never sees a half-written file or folder.

Every output of neuroflow (manifests, expert folders, merged models, reports, pipeline state)
goes through these helpers: write under a temporary name in the same directory, then rename.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> None:
    """Call `write(tmp_path)` on a temporary file next to `path`, fsync it, then rename it in.

    Args:
        path: the final file; its parent directory is created when missing.
        write: writes the content to the path it is given (e.g. `Path.write_text`, `savefig`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        # mkstemp creates 0600 files; outputs are meant to be shared like any other file.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        write(Path(tmp))
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically.

    Args:
        path: the final file.
        text: its content.
    """
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    """Write `data` as indented JSON to `path` atomically (non-JSON values via `str`).

    Args:
        path: the final file.
        data: JSON-serialisable data.
    """
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def replace_dir(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Move the finished folder `tmp` to `final`; an existing `final` is removed only afterwards.

    Args:
        tmp: a complete folder, on the same file system as `final`.
        final: where it belongs; whatever is there stays intact until `tmp` has replaced it.
    """
    tmp, final = Path(tmp), Path(final)
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
