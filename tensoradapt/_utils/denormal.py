"""Flushing subnormal floats to zero on the CPU, for the span of a run, and reading whether it is on.

A float32 below 1.2e-38 is subnormal, and x86 CPUs compute with subnormal operands or results through a slow
path (Intel's much slower than AMD's). Trained attention is sharp: its softmax puts most keys at probabilities
of 1e-39 and below, and every product with them (P V, the backward's dS = P * (dO V^T - ...)) takes that
path. On an Intel Xeon one CPU training step of the tiny SAM at T = 8 tasks took 1.72x as long with them as
with them flushed to zero (README, Performance). Flushing changes an operation's result only where it is below
1.2e-38; the training trajectory moves by float noise (losses within 1 % after 70 steps).

The flag is per thread. `torch.set_flush_denormal` sets the calling thread's, and a thread inherits it when it
is created: torch's intra-op pool, created at the first multi-threaded op and kept for the life of the process,
keeps the state its threads were created with. So set it before the first multi-threaded op (as
`train.finetune.run` does); set later, it covers the calling thread only. Leaving `flush_denormal` restores the
calling thread's flag; pool threads created inside keep flushing.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

__all__ = ["denormals_flushed", "flush_denormal"]


def denormals_flushed() -> bool:
    """Whether the calling thread computes float32 subnormals as zero (torch has no getter for the flag)."""
    # a subnormal made from its bits (2^20 * 2^-149 = 1.5e-39), so no float conversion can flush it first; one
    # element, so no other thread computes the product
    x = torch.tensor([1 << 20], dtype=torch.int32, device="cpu").view(torch.float32)
    return bool((x * 1.0).item() == 0.0)


@contextlib.contextmanager
def flush_denormal(enabled: bool = True) -> Iterator[bool]:
    """Flush subnormal floats to zero inside (`enabled`; False turns flushing off), restoring the calling
    thread's previous flag on exit; yields whether they are flushed inside (False where the CPU cannot, e.g.
    without SSE3)."""
    before = denormals_flushed()
    changed = enabled != before and torch.set_flush_denormal(enabled)
    try:
        yield denormals_flushed()
    finally:
        if changed:
            torch.set_flush_denormal(before)
