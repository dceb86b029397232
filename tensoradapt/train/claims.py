"""Claims: processes sharing one sweep folder run each cell once, and a process that finishes its own share
takes the cells nobody is running (so N shards end together instead of waiting on the unluckiest one).

    with claim(cell_dir) as mine:
        if mine:
            train(...)

A claim is a non-blocking `file_lock` on `<cell_dir>/.claim` (an exclusive `flock`), held for the block. The
kernel drops it when its process exits, however it exits, so a killed run never leaves a cell claimed; the file
itself stays and names the last holder ("<pid> <host>", `holder`). Advisory locks need a filesystem that
supports them (local disks do; some network filesystems do not); without `fcntl` (not POSIX) every claim
succeeds.
"""
from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from typing import Iterator

from .._utils import file_lock

__all__ = ["claim", "holder", "CLAIM"]

CLAIM = ".claim"


@contextlib.contextmanager
def claim(cell_dir: str | os.PathLike) -> Iterator[bool]:
    """Yield True if this process now holds `cell_dir`'s claim (released on exit), False if another open claim
    (another process, or another `claim` of this one) holds it."""
    with file_lock(Path(cell_dir) / CLAIM, blocking=False) as fh:
        if fh is not None:
            fh.seek(0)
            fh.truncate()
            fh.write(f"{os.getpid()} {socket.gethostname()}\n")
            fh.flush()
        yield fh is not None


def holder(cell_dir: str | os.PathLike) -> str:
    """"<pid> <host>" of the claim's last holder ("" if never claimed)."""
    try:
        return (Path(cell_dir) / CLAIM).read_text().strip()
    except OSError:
        return ""
