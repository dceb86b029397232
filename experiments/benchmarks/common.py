"""Shared helpers for the benchmarks: interleaved repeated timing, machine info, table and JSON output.

Timings on a shared 2-core machine are noisy, so every benchmark runs its variants interleaved in one
process (round-robin, in a shuffled order each round) and reports medians and ratios of medians.
"""
from __future__ import annotations

import json
import os
import platform
import random
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

__all__ = ["machine_info", "interleaved_medians", "print_table", "write_json"]


def machine_info() -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


def _sync(device: str | torch.device | None) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def interleaved_medians(
    variants: dict[str, Callable[[], object]], repeats: int = 7, warmup: int = 2, device=None, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Run every variant `warmup` times, then `repeats` rounds in a shuffled order; seconds per call."""
    rng = random.Random(seed)
    names = list(variants)
    for _ in range(warmup):
        for n in names:
            variants[n]()
    _sync(device)
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(repeats):
        rng.shuffle(names)
        for n in names:
            _sync(device)
            t0 = time.perf_counter()
            variants[n]()
            _sync(device)
            times[n].append(time.perf_counter() - t0)
    return {
        n: {"median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts), "repeats": len(ts)}
        for n, ts in times.items()
    }


def print_table(rows: list[dict], columns: list[str]) -> str:
    """Render rows as a Markdown table (returned and printed)."""
    def fmt(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    text = "\n".join(lines)
    print(text)
    return text


def write_json(path: str | Path, payload: dict) -> Path:
    from tensoradapt.io import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2))
    print(f"wrote {path}")
    return path
