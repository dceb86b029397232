"""Flushing subnormal floats to zero on the CPU, for the span of a run, and reading whether it is on.

A float32 below 1.2e-38 is subnormal, and x86 CPUs compute with subnormal operands or results through a slow
path. Trained attention is sharp: its softmax puts most keys at probabilities of 1e-39 and below, and every
product with them (p v, the backward's dS = P * (dO V^T - ...)) takes that path. On the tiny SAM one CPU
training step at T = 8 tasks took 1.72x as long with them as with them flushed to zero (README, Performance).
Flushing changes a value only where it is below 1.2e-38, far below float32's resolution of any sum it enters.

`torch.set_flush_denormal` sets the flag on the calling thread, and a thread inherits it when it is created:
torch's intra-op pool, created at the first parallel op, keeps the state its threads were created with. So
set it before the first multi-threaded op (as `train.finetune.run` does); set later, it covers the calling
thread only.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

__all__ = ["denormals_flushed", "flush_denormal"]

_SUBNORMAL = 1e-39  # float32's smallest normal is 1.18e-38


def denormals_flushed() -> bool:
    """Whether this thread computes float32 subnormals as zero (torch has no getter for the flag)."""
    x = torch.full((1,), _SUBNORMAL, dtype=torch.float32)
    return bool((x * 1.0).item() == 0.0)


@contextlib.contextmanager
def flush_denormal(enabled: bool = True) -> Iterator[bool]:
    """Flush subnormal floats to zero inside (`enabled`), restoring the previous state on exit; yields whether
    they are flushed inside (False where the CPU cannot, e.g. without SSE3)."""
    before = denormals_flushed()
    if enabled != before:
        torch.set_flush_denormal(enabled)
    try:
        yield denormals_flushed()
    finally:
        if denormals_flushed() != before:
            torch.set_flush_denormal(before)
