"""Claim files: processes sharing one sweep folder run each cell once, and a process that finishes its own share
takes the cells nobody has started (so N shards end together instead of waiting on the unluckiest one).

    with claim(cell_dir) as mine:
        if mine:
            train(...)

A claim is `<cell_dir>/.claim`, created atomically (O_EXCL) and holding "<pid> <host>". It is removed when the
block ends, also on an exception. A claim whose process is gone (same host, pid not alive: a killed run) is
taken over; one from another host is respected until it is deleted by hand.
"""
from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from typing import Iterator

__all__ = ["claim", "CLAIM"]

CLAIM = ".claim"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def _take(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(f"{os.getpid()} {socket.gethostname()}\n")
    return True


def _stale(path: Path) -> bool:
    """True if the claim's process is gone (on this host); a half-written or unreadable claim is not stale."""
    try:
        pid, host = path.read_text().split()
        return host == socket.gethostname() and not _alive(int(pid))
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def claim(cell_dir: str | Path) -> Iterator[bool]:
    """Yield True if this process now holds `cell_dir`'s claim (released on exit), False if another live
    process holds it."""
    cell_dir = Path(cell_dir)
    cell_dir.mkdir(parents=True, exist_ok=True)
    path = cell_dir / CLAIM
    mine = _take(path)
    if not mine and _stale(path):
        lock = cell_dir / (CLAIM + ".takeover")  # one process at a time re-checks and replaces a stale claim
        if _take(lock):
            try:
                if _stale(path):
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                mine = _take(path)
            finally:
                lock.unlink()
    try:
        yield mine
    finally:
        if mine:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
