"""Worker processes of tests/test_atomic.py (real processes: races and kills need them).

    python tests/atomic_workers.py writer FINAL COUNT TAG      # COUNT folder swaps of FINAL
    python tests/atomic_workers.py reader FINAL STOPFILE       # checks FINAL until STOPFILE exists
    python tests/atomic_workers.py hold FINAL                  # makes a temporary, then waits
    python tests/atomic_workers.py crash FINAL exchange|fallback  # dies (SIGKILL) inside a swap

A folder written by `writer` holds `a.txt` and `b.txt` with the same token: a reader that finds
the folder missing, or the two files differing, saw a torn swap.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import neuroflow.atomic as atomic


def _temp_dir(final: Path) -> Path:
    make = getattr(atomic, "make_temp_dir", None)
    if make is not None:
        return make(final)
    # neuroflow before pid-named temporaries: the same race test still applies to replace_dir.
    import uuid

    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    return tmp


def write_version(final: Path, token: str) -> None:
    tmp = _temp_dir(final)
    (tmp / "a.txt").write_text(token)
    (tmp / "b.txt").write_text(token)
    atomic.replace_dir(tmp, final)


def writer(final: Path, count: int, tag: str) -> None:
    for i in range(count):
        write_version(final, f"{tag}-{i}")


def reader(final: Path, stop: Path) -> None:
    checks = missing = torn = 0
    deadline = time.monotonic() + 120  # bounded even if the writers never finish
    while not stop.exists() and time.monotonic() < deadline:
        checks += 1
        try:
            a = (final / "a.txt").read_text()
        except FileNotFoundError:
            missing += 1
            continue
        try:
            b = (final / "b.txt").read_text()
        except FileNotFoundError:
            missing += 1
            continue
        # b is read after a: a newer swap in between is fine, a half-filled folder is not.
        torn += not a or not b
    print(f"{checks} {missing} {torn}", flush=True)


def hold(final: Path) -> None:
    tmp = atomic.make_temp_dir(final)
    (tmp / "partial.bin").write_bytes(b"x" * 1024)
    print(tmp, flush=True)
    time.sleep(600)


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def crash(final: Path, mode: str) -> None:
    """Swap a new version in and die right after the first rename of the swap."""
    tmp = _temp_dir(final)
    (tmp / "a.txt").write_text("new")
    (tmp / "b.txt").write_text("new")
    print(tmp, flush=True)
    if mode == "fallback":
        def unsupported(a, b):
            raise atomic._ExchangeUnsupported

        atomic._exchange = unsupported
    else:
        real_exchange = getattr(atomic, "_exchange", None)

        def exchange_then_die(a, b):
            done = real_exchange(a, b)
            _die()
            return done

        atomic._exchange = exchange_then_die
    real_replace, real_rename = os.replace, os.rename

    def die_after(real):
        def move(src, dst, *args, **kwargs):
            real(src, dst, *args, **kwargs)
            _die()
        return move

    # Whatever the implementation moves first, the process dies right after it.
    os.replace, os.rename = die_after(real_replace), die_after(real_rename)
    atomic.replace_dir(tmp, final)
    print("swap finished without a kill point", flush=True)


if __name__ == "__main__":
    command, final = sys.argv[1], Path(sys.argv[2])
    if command == "writer":
        writer(final, int(sys.argv[3]), sys.argv[4])
    elif command == "reader":
        reader(final, Path(sys.argv[3]))
    elif command == "hold":
        hold(final)
    elif command == "crash":
        crash(final, sys.argv[3])
    else:
        raise SystemExit(f"unknown command {command}")
