"""Shared helpers for fitting task deltas to dense tensors (the per-decomposition fit lives in each class).

`Cls.from_tensor(dense, ranks)` compresses T separately fine-tuned updates `dense: (T, d_out, d_in)` into one
factorised delta: the class's `_fit` fills its factors (HOOI for Tucker, CP-ALS for CP, TT-SVD for TT, a
truncated SVD for the LoRA baselines). tensorly is used for fitting only, never in a forward pass; the fit
runs in float64 on the CPU under tensorly's numpy backend (the caller's backend is restored afterwards).
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "FitOptions", "relative_error", "check_dense", "tensorly_numpy", "as_torch", "pad_to", "fill_",
    "to_parameters",
]


@dataclass(frozen=True)
class FitOptions:
    """Iteration controls of the iterative fits (HOOI, CP-ALS); `n_restarts` extra random-init CP-ALS runs
    are tried after the SVD-initialised one (the best fit wins)."""

    n_iter_max: int = 500
    tol: float = 1e-12
    random_state: int = 0
    n_restarts: int = 0


def relative_error(dense: Tensor, approx: Tensor) -> float:
    """`||dense - approx||_F / ||dense||_F` (0 for an all-zero `dense` matched exactly)."""
    num = torch.linalg.vector_norm((dense - approx).double())
    den = torch.linalg.vector_norm(dense.double())
    return float(num / den) if den > 0 else float(num)


def check_dense(dense: Tensor) -> Tensor:
    """`dense: (T, d_out, d_in)`, finite, as a detached float64 CPU tensor."""
    if not isinstance(dense, Tensor) or dense.dim() != 3:
        raise ValueError(
            f"dense must be a (T, d_out, d_in) tensor, got "
            f"{tuple(dense.shape) if isinstance(dense, Tensor) else type(dense).__name__}"
        )
    if not torch.isfinite(dense).all():
        raise ValueError("dense contains NaN or inf")
    return dense.detach().to("cpu", torch.float64)


@contextlib.contextmanager
def tensorly_numpy() -> Iterator[None]:
    """tensorly's numpy backend and no autograd for the block (the previous backend is restored)."""
    import tensorly as tl

    with tl.backend_context("numpy"), torch.no_grad(), warnings.catch_warnings():
        # tensorly warns when a requested rank exceeds a mode; `fill_` pads such modes with zeros
        warnings.filterwarnings("ignore", message=".*n_eigenvecs.*")
        yield


def as_torch(a: Any) -> Tensor:
    """A torch copy of a tensorly / numpy / torch array."""
    if isinstance(a, Tensor):
        return a.detach().clone()
    if not isinstance(a, np.ndarray):
        import tensorly as tl

        a = tl.to_numpy(a)
    return torch.from_numpy(np.ascontiguousarray(a)).clone()


def pad_to(t: Tensor, shape: Sequence[int]) -> Tensor:
    """`t` zero-padded at the end of each mode up to `shape` (no mode of `t` may exceed it)."""
    shape = tuple(shape)
    if t.dim() != len(shape) or any(n > s for n, s in zip(t.shape, shape)):
        raise ValueError(f"a tensor of shape {tuple(t.shape)} does not fit in {shape}")
    out = t.new_zeros(shape)
    out[tuple(slice(0, n) for n in t.shape)] = t
    return out


#: the old private name; tensoradapt/interop/peft.py imports it (remove once it imports `pad_to`)


def fill_(targets: Sequence[Tensor], values: Sequence[Any]) -> None:
    """Copy each value into its target, zero-padding at the end of each mode (tensorly may return smaller
    ranks than asked for when a rank exceeds a mode); no autograd."""
    with torch.no_grad():
        for target, value in zip(targets, values, strict=True):
            target.copy_(pad_to(as_torch(value), target.shape))


def to_parameters(tensors: Sequence[Tensor]) -> list[torch.nn.Parameter]:
    """Detached copies as parameters (what tensorly-torch's factorised tensors hold)."""
    return [torch.nn.Parameter(t.detach().clone()) for t in tensors]
