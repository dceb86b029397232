"""Atomic writes: a file is either the old version or the complete new one, never half-written."""
from __future__ import annotations

import dataclasses
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

__all__ = ["atomic_path", "dataclass_kwargs"]


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in `path`'s directory; on success fsync and rename it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def dataclass_kwargs(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    """`data` as keyword arguments for the dataclass `cls`, refusing keys it has no field for (a config
    JSON from another version or a typo must not be half-read)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {unknown}")
    return dict(data)
