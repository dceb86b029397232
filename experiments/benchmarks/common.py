"""Shared helpers for the benchmarks: interleaved repeated timing, machine info, table and JSON output.

Timings on a shared 2-core machine are noisy, so every benchmark runs its variants interleaved in one
process (round-robin, in a shuffled order each round) and reports medians and ratios of medians.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
import platform
import random
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

__all__ = [
    "machine_info", "interleaved_medians", "print_table", "write_json", "add_malloc_arg", "steady_allocator",
    "peak_tensor_bytes",
]

_ALLOCATOR = {"malloc": "system"}


def add_malloc_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--malloc", choices=["steady", "system"], default="steady",
        help="steady (default): keep freed memory in the process while timing (see steady_allocator); "
             "system: the C library's default behaviour",
    )


def steady_allocator() -> bool:
    """Keep freed memory inside this process (glibc only): no mmap for large blocks, no trimming.

    By default glibc serves every large tensor with a fresh mmap and returns it on free, so each step
    page-faults its activations in again; on this machine that alone moved identical encoder passes by
    5-10% from one variant to the next. With it off, timings measure compute. Process-wide and
    irreversible: call it from a benchmark's main, never from library code. Returns whether it applied.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4  # glibc's mallopt parameter numbers
    ok = libc.mallopt(M_MMAP_MAX, 0) and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
    ok = ok and libc.mallopt(M_TOP_PAD, 256 << 20)
    if ok:
        _ALLOCATOR["malloc"] = "steady (glibc mallopt: M_MMAP_MAX=0, no trim)"
    return bool(ok)


def peak_tensor_bytes(fn: Callable[[], object], device: str | torch.device = "cpu") -> int:
    """Peak bytes of tensor memory that `fn()` holds above what was allocated when it started.

    CUDA: `torch.cuda.max_memory_allocated`. CPU: the same quantity replayed from the profiler's memory
    records (every op's own allocations and frees, in time order; so at op granularity: a temporary an op
    frees before it returns is not seen); deterministic, unlike the RSS, which depends on when the C
    allocator hands pages back.
    """
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    changes = []
    for e in prof.events():
        # "[memory]" records are allocations/frees outside any op; an op's own ones are its self usage
        delta = e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage
        if delta:  # an op's net frees count when it ends, its net allocations when it starts
            changes.append((e.time_range.end if delta < 0 else e.time_range.start, delta))
    live = peak = 0
    for _, delta in sorted(changes):
        live += delta
        peak = max(peak, live)
    return peak


def machine_info() -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "malloc": _ALLOCATOR["malloc"],
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
    from tensoradapt._utils import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2))
    print(f"wrote {path}")
    return path
