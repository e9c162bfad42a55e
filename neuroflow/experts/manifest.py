"""The experts directory's index: one `expert.json` per expert, and an aggregate `manifest.json`.

Each fit writes only its own `<name>/expert.json`, so concurrent fits (several processes or
machines on a shared filesystem) cannot overwrite each other's entries. `manifest.json` is a
derived view, rebuilt from all entry files under an `fcntl` lock and replaced atomically.
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from neuroflow.atomic import atomic_write_json, atomic_write_text  # noqa: F401 (re-exported)
from neuroflow.experts.expert import ENTRY, Expert, ExpertFormatError

MANIFEST = "manifest.json"
LOCK = ".manifest.lock"
MANIFEST_VERSION = 1


@contextmanager
def manifest_lock(experts_dir: str | os.PathLike) -> Iterator[None]:
    """Exclusive advisory lock on the experts directory (blocks until free)."""
    experts_dir = Path(experts_dir)
    experts_dir.mkdir(parents=True, exist_ok=True)
    with open(experts_dir / LOCK, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def read_entry(path: str | os.PathLike) -> dict[str, Any]:
    """Parse and check one `expert.json` (through `Expert.from_entry`, the one parser); the raw dict.

    Raises:
        ValueError: unreadable JSON or a malformed entry, naming the file and key.
    """
    path = Path(path)
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ExpertFormatError(f"{path}: cannot read the expert entry: {err}") from err
    Expert.from_entry(entry, path.parent.parent, where=str(path), folder=path.parent)
    return entry


def _scan_entries(experts_dir: Path) -> list[dict[str, Any]]:
    entries = [read_entry(p) for p in sorted(experts_dir.glob(f"*/{ENTRY}")) if not p.parent.name.startswith(".")]
    return sorted(entries, key=lambda e: e["name"])


def rebuild_manifest(experts_dir: str | os.PathLike) -> dict[str, Any]:
    """Rebuild `manifest.json` from every `<name>/expert.json` (under the lock) and return it."""
    experts_dir = Path(experts_dir)
    with manifest_lock(experts_dir):
        manifest = {"version": MANIFEST_VERSION, "experts": _scan_entries(experts_dir)}
        atomic_write_json(experts_dir / MANIFEST, manifest)
    return manifest


def load_manifest(experts_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The expert entries of a directory, sorted by name.

    Reads the per-expert `expert.json` files (the source of truth); falls back to
    `manifest.json` when there are none (e.g. a manifest copied on its own).

    Args:
        experts_dir: the experts directory.

    Raises:
        FileNotFoundError: the directory holds no experts.
        ValueError: a malformed entry, naming its file.
    """
    experts_dir = Path(experts_dir)
    if not experts_dir.is_dir():
        raise FileNotFoundError(f"experts directory {experts_dir} does not exist")
    entries = _scan_entries(experts_dir)
    if entries:
        return entries
    manifest_path = experts_dir / MANIFEST
    if manifest_path.is_file():
        try:
            data = json.loads(manifest_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{manifest_path}: invalid JSON: {err}") from err
        return sorted(data.get("experts", []), key=lambda e: e["name"])
    raise FileNotFoundError(f"no experts in {experts_dir} (no */{ENTRY} and no {MANIFEST})")


def load_experts(experts_dir: str | os.PathLike) -> list[Expert]:
    """The experts of a directory as typed `Expert`s, sorted by name (see `load_manifest`)."""
    root = Path(experts_dir)
    return [Expert.from_entry(e, root, where=f"{root / e.get('name', '?') / ENTRY}") for e in load_manifest(root)]


def find_expert(experts_dir: str | os.PathLike, name: str) -> dict[str, Any]:
    """The entry named `name` (an expert's name is its task name for single-task fits).

    Raises:
        KeyError: no such expert; lists the ones present.
    """
    entries = load_manifest(experts_dir)
    for entry in entries:
        if entry["name"] == name:
            return entry
    raise KeyError(f"no expert {name!r} in {experts_dir}; experts: {[e['name'] for e in entries]}")
