"""An append-only JSON-lines log that a resumed run rewinds to its checkpoint's step."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterator

from .._utils import atomic_write_text

__all__ = ["JsonlLogger", "read_jsonl"]


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no nan/inf
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Records of a log; a torn last line (the process died mid-write) is ignored."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


class JsonlLogger:
    """One JSON object per line; `enabled=False` (non-zero ranks) makes every call a no-op."""

    def __init__(self, path: str | Path, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled

    def rewind(self, step: int) -> None:
        """Drop records written after optimiser step `step` (a killed run's unsaved progress)."""
        if not self.enabled:
            return
        keep = [r for r in read_jsonl(self.path) if int(r.get("step", 0)) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in keep))

    def reset(self) -> None:
        if self.enabled:
            atomic_write_text(self.path, "")

    def log(self, event: str, **fields: Any) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(_clean({"event": event, **fields})) + "\n")

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(read_jsonl(self.path))
