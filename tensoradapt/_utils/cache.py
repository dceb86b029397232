"""Where generated data and built checkpoints live: outside git, reused across runs."""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir(*parts: str) -> Path:
    """`$TENSORADAPT_CACHE` (default `~/.cache/tensoradapt`) joined with `parts`; created on demand."""
    root = Path(os.environ.get("TENSORADAPT_CACHE", Path.home() / ".cache" / "tensoradapt"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
