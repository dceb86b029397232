"""Hypothesis strategies shared by the core-library tests: random shapes with valid ranks per decomposition."""
from __future__ import annotations

import torch
from hypothesis import strategies as st

from tensoradapt.deltas import DELTA_CLASSES

DECOMPS = tuple(DELTA_CLASSES)
DTYPES = (torch.float32, torch.float64)


@st.composite
def shapes_and_ranks(draw, decomp: str | None = None, max_dim: int = 10, max_tasks: int = 4):
    """(decomp, (T, d_out, d_in), ranks) with ranks inside the class's bounds."""
    decomp = decomp or draw(st.sampled_from(DECOMPS))
    T = draw(st.integers(1, max_tasks))
    d_out = draw(st.integers(1, max_dim))
    d_in = draw(st.integers(1, max_dim))
    if decomp == "tucker":
        r_out = draw(st.integers(1, d_out))
        r_in = draw(st.integers(1, d_in))
        r_task = draw(st.integers(1, min(r_out * r_in, T + 2)))  # the task rank may exceed T
        ranks = (r_task, r_out, r_in)
    elif decomp == "cp":
        ranks = draw(st.integers(1, 8))
    elif decomp == "tt":
        r2 = draw(st.integers(1, d_in))
        r1 = draw(st.integers(1, min(d_out * r2, T + 2)))
        if r2 > r1 * d_out:
            r2 = r1 * d_out
        ranks = (r1, r2)
    else:
        ranks = draw(st.integers(1, min(d_out, d_in)))
    return decomp, (T, d_out, d_in), ranks


def randomize_(delta, seed: int = 0):
    """Give every factor non-zero random values (the zero-start init would make most checks trivial)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in delta.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype))
    return delta
