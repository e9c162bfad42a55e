"""Atomic file-system writes: a reader (or a crash) never sees a half-written file or folder.

Every output of neuroflow (manifests, expert folders, merged models, reports, pipeline state)
goes through these helpers: write under a temporary name in the same directory, then rename.

Folders are swapped in with one `renameat2(RENAME_EXCHANGE)` where the kernel and file system
support it (Linux >= 3.15 on ext4, xfs, btrfs, tmpfs, ...): readers see the old folder or the new
one, never none, however many writers race, and a crash at any point leaves a complete folder at
the final path. Elsewhere the old folder is moved aside under a lock and the new one renamed in
(readers may see the path missing for the instant between the two renames; a crash there is
repaired by the next writer, which moves the old folder back).

Temporaries are named `.<name>.tmp-<pid>-<host>.<random>` (`.old-` for folders moved aside), so
the next writer of the same output finds those whose process is gone and deletes them.

Everything written here gets the permissions the umask allows (`0666 & ~umask` for files,
`0777 & ~umask` for folders): some writers (safetensors, `tempfile`) create `0600` files, which a
team's shared folder could not read.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

_TMP, _OLD = "tmp", "old"
# Whatever a crashed writer left: 16 attempts cover any number of concurrent writers in practice.
_SWAP_ATTEMPTS = 16


# -- permissions ---------------------------------------------------------------------------------

def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux `/proc`), since
    setting it to read it back would briefly affect files other threads create."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def honour_umask(path: str | os.PathLike) -> None:
    """Give `path` (a file, or a folder and everything in it) the modes the umask allows.

    Files get `0666 & ~umask` (`0777 & ~umask` when they were executable), folders `0777 & ~umask`.
    Symbolic links are left alone (their targets are not ours to change).

    Args:
        path: a file or folder that this process has just written.
    """
    umask = current_umask()
    path = Path(path)

    def fix(p: Path, is_dir: bool) -> None:
        if p.is_symlink():
            return
        mode = p.stat().st_mode
        wanted = 0o777 if is_dir or mode & 0o111 else 0o666
        if mode & 0o777 != wanted & ~umask:
            os.chmod(p, wanted & ~umask)

    if path.is_dir() and not path.is_symlink():
        fix(path, True)
        for root, dirs, files in os.walk(path):
            for name in dirs:
                fix(Path(root) / name, True)
            for name in files:
                fix(Path(root) / name, False)
    elif path.exists():
        fix(path, False)


# -- files ---------------------------------------------------------------------------------------

def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> None:
    """Call `write(tmp_path)` on a temporary file next to `path`, fsync it, then rename it in.

    Args:
        path: the final file; its parent directory is created when missing.
        write: writes the content to the path it is given (e.g. `Path.write_text`, `savefig`,
            `safetensors.torch.save_file`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        # After `write`: mkstemp makes 0600 files, and writers such as safetensors replace the
        # file they are given by a 0600 one of their own.
        honour_umask(tmp)
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


# -- temporaries ---------------------------------------------------------------------------------

def _host_tag() -> str:
    # Output folders may be shared by several machines (a cluster file system): a pid is only
    # meaningful on the host that wrote it.
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def _temp_path(final: Path, kind: str) -> Path:
    return final.parent / f".{final.name}.{kind}-{os.getpid()}-{_host_tag()}.{uuid.uuid4().hex[:8]}"


def _owner(candidate: Path, final: Path, kind: str) -> tuple[int, str | None] | None:
    """(pid, host tag or None) encoded in a temporary's name; None if not one of ours.
    `<pid>-<random>` (no host, as neuroflow.checkpoints names them) counts as this host's."""
    rest = candidate.name[len(f".{final.name}.{kind}-"):]
    pid, sep, tail = rest.partition("-")
    if not sep or not pid.isdigit() or not tail:
        return None
    host, dot, _ = tail.partition(".")
    return int(pid), (host if dot else None)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs on this host (a zombie, killed but not yet reaped, does not)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _stale(final: Path, kind: str) -> list[Path]:
    """Temporaries of `final` of this kind whose writer (on this host) no longer runs, newest first."""
    if not final.parent.is_dir():
        return []
    here, found = _host_tag(), []
    for candidate in final.parent.glob(f".{final.name}.{kind}-*"):
        owner = _owner(candidate, final, kind)
        if owner is None or (owner[1] is not None and owner[1] != here) or pid_alive(owner[0]):
            continue
        try:
            found.append((candidate.lstat().st_mtime, candidate))
        except FileNotFoundError:  # another writer cleaned it meanwhile
            continue
    return [p for _, p in sorted(found, reverse=True)]


def clean_stale(final: str | os.PathLike) -> list[Path]:
    """Repair and clean what killed writers of `final` left next to it.

    A folder moved aside by a writer that died before renaming its new one in (only possible
    without RENAME_EXCHANGE) is moved back when `final` is missing; every other temporary of a
    writer that no longer runs on this host is deleted. Temporaries of live processes, and of
    other hosts, are left alone.

    Args:
        final: the output file or folder.

    Returns:
        the temporaries removed (or restored).
    """
    final = Path(final)
    handled: list[Path] = []
    olds = _stale(final, _OLD)
    if olds and not final.exists():
        try:
            os.rename(olds[0], final)
            handled.append(olds.pop(0))
        except OSError:  # another writer restored or replaced it first
            pass
    for path in olds + _stale(final, _TMP):
        _remove(path)
        handled.append(path)
    return handled


def make_temp_dir(final: str | os.PathLike) -> Path:
    """A new empty folder next to `final` (same file system, so the swap is atomic), named after
    this process; stale temporaries of `final` are cleaned first (`clean_stale`).

    Args:
        final: the output folder it will become (with `replace_dir`).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(final)
    tmp = _temp_path(final, _TMP)
    tmp.mkdir()
    return tmp


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# -- folder swaps --------------------------------------------------------------------------------

class _ExchangeUnsupported(Exception):
    pass


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2
_renameat2: Any = None


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap `a` and `b`; False when `b` does not exist.

    Raises:
        _ExchangeUnsupported: not Linux, an old C library or kernel, or a file system without it.
    """
    global _renameat2
    if not sys.platform.startswith("linux"):
        raise _ExchangeUnsupported
    if _renameat2 is None:
        func = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
        if func is None:
            raise _ExchangeUnsupported
        func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        func.restype = ctypes.c_int
        _renameat2 = func
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err == errno.ENOENT and a.exists():
        return False
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
        raise _ExchangeUnsupported
    raise OSError(err, f"cannot swap {a} and {b}: {os.strerror(err)}")


@contextmanager
def _writers_lock(final: Path) -> Iterator[None]:
    """Serialises the fallback swap between writers of `final` (POSIX `flock`, where available)."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock; os.replace is the best there is
        yield
        return
    with open(final.parent / f".{final.name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _move_aside_and_in(tmp: Path, final: Path) -> None:
    """The swap without RENAME_EXCHANGE: old folder aside, new one in, old one deleted."""
    with _writers_lock(final):
        clean_stale(final)
        old = None
        if final.exists():
            old = _temp_path(final, _OLD)
            os.replace(final, old)
        os.replace(tmp, final)
    if old is not None:
        _remove(old)


def replace_dir(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Move the finished folder `tmp` to `final`, replacing whatever is there in one step.

    The new folder's permissions are set from the umask first (`honour_umask`). Concurrent writers
    of the same `final` each swap in a complete folder (the last one wins); readers always find a
    complete folder at `final` (see the module docstring for systems without RENAME_EXCHANGE).

    Args:
        tmp: a complete folder, on the same file system as `final` (e.g. from `make_temp_dir`).
        final: where it belongs.
    """
    tmp, final = Path(tmp), Path(final)
    if not tmp.is_dir():
        raise FileNotFoundError(f"replace_dir: {tmp} is not a folder")
    honour_umask(tmp)
    try:
        for _ in range(_SWAP_ATTEMPTS):
            if _exchange(tmp, final):
                _remove(tmp)  # now holds the previous folder
                return
            try:
                # Nothing at `final`: a plain rename, which refuses to replace a folder that
                # another writer has put there in the meantime (then exchange with it).
                os.rename(tmp, final)
                return
            except OSError as err:
                if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
        raise OSError(f"replace_dir: {final} kept changing under {_SWAP_ATTEMPTS} attempts to swap {tmp} in")
    except _ExchangeUnsupported:
        _move_aside_and_in(tmp, final)
