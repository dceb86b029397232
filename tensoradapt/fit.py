"""Fit task deltas to dense tensors with tensorly, and convert to/from the ecosystem's tensor objects.

`TuckerDelta.from_tensor(dense, ranks)` (and the same on every delta class) compresses T separately
fine-tuned updates `dense: (T, d_out, d_in)` into one factorised delta: HOOI for Tucker, CP-ALS for
CP, TT-SVD for TT and a truncated SVD for the LoRA baselines. tensorly is used here only, never in a
forward pass. The fit runs in float64 on the CPU with tensorly's numpy backend (the caller's backend is
restored afterwards).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover
    from .deltas.base import TaskDelta

__all__ = [
    "fit_delta", "relative_error", "to_tensorly", "from_tensorly", "to_tltorch", "from_tltorch",
]


def relative_error(dense: Tensor, approx: Tensor) -> float:
    """`||dense - approx||_F / ||dense||_F` (0 for an all-zero `dense` matched exactly)."""
    num = torch.linalg.vector_norm((dense - approx).double())
    den = torch.linalg.vector_norm(dense.double())
    return float(num / den) if den > 0 else float(num)


def _pad(t: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Zero-pad `t` at the end of each mode up to `shape` (tensorly may return smaller ranks)."""
    out = t.new_zeros(shape)
    out[tuple(slice(0, s) for s in t.shape)] = t
    return out


def _check_dense(dense: Tensor) -> Tensor:
    if not isinstance(dense, Tensor) or dense.dim() != 3:
        raise ValueError(
            f"dense must be a (T, d_out, d_in) tensor, got "
            f"{tuple(dense.shape) if isinstance(dense, Tensor) else type(dense).__name__}"
        )
    if not torch.isfinite(dense).all():
        raise ValueError("dense contains NaN or inf")
    return dense.detach().to("cpu", torch.float64)


def fit_delta(
    cls: type["TaskDelta"], dense: Tensor, ranks, n_iter_max: int = 500, tol: float = 1e-12,
    random_state: int = 0, n_restarts: int = 0,
) -> tuple["TaskDelta", float]:
    """Fit a `cls` delta of the given ranks to `dense: (T, d_out, d_in)`.

    `n_restarts` extra random-init CP-ALS runs are tried after the SVD-initialised one (CP only; the
    best fit wins). Returns `(delta, relative_error)`; the delta has `dense`'s dtype and device.
    """
    import warnings

    import tensorly as tl
    from tensorly.decomposition import parafac, tensor_train, tucker

    x = _check_dense(dense)
    xn = x.numpy()
    delta = cls(shape=tuple(x.shape), ranks=ranks).double()
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    with tl.backend_context("numpy"), torch.no_grad(), warnings.catch_warnings():
        # tensorly warns when a requested rank exceeds a mode; we pad such modes with zeros ourselves
        warnings.filterwarnings("ignore", message=".*n_eigenvecs.*")
        if delta.decomp == "tucker":
            fit_ranks = [min(r, n) for r, n in zip(delta.ranks, x.shape)]
            core, (u_t, u_o, u_i) = tucker(
                xn, rank=fit_ranks, n_iter_max=n_iter_max, tol=tol, random_state=random_state
            )
            delta.core.copy_(_pad(t(core), delta.core.shape))
            delta.task_factor.copy_(_pad(t(u_t), delta.task_factor.shape))
            delta.out_factor.copy_(_pad(t(u_o), delta.out_factor.shape))
            delta.in_factor.copy_(_pad(t(u_i), delta.in_factor.shape))
        elif delta.decomp == "cp":
            best = None
            inits = ["svd"] + ["random"] * n_restarts  # tensorly pads an SVD init beyond a mode with random columns
            for k, init in enumerate(inits):
                cp = parafac(xn, rank=delta.ranks, n_iter_max=n_iter_max, init=init, tol=tol,
                             random_state=random_state + k)
                err = relative_error(x, t(tl.cp_to_tensor(cp)))
                if best is None or err < best[0]:
                    best = (err, cp)
            weights, (a_t, a_o, a_i) = best[1]
            delta.task_factor.copy_(t(a_t * weights))
            delta.out_factor.copy_(t(a_o))
            delta.in_factor.copy_(t(a_i))
        elif delta.decomp == "tt":
            g1, g2, g3 = tensor_train(xn, rank=[1, *delta.ranks, 1])
            delta.task_core.copy_(_pad(t(g1), delta.task_core.shape))
            delta.out_core.copy_(_pad(t(g2), delta.out_core.shape))
            delta.in_core.copy_(_pad(t(g3), delta.in_core.shape))
        elif delta.decomp == "lora":
            r = delta.ranks
            u, s, vh = torch.linalg.svd(x, full_matrices=False)
            root = s[:, :r].sqrt()
            delta.B.copy_(u[:, :, :r] * root.unsqueeze(1))
            delta.A.copy_(root.unsqueeze(2) * vh[:, :r])
        elif delta.decomp == "shared-lora":
            # The best single rank-r matrix for all tasks in the least-squares sense: truncate the mean.
            r = delta.ranks
            u, s, vh = torch.linalg.svd(x.mean(0), full_matrices=False)
            root = s[:r].sqrt()
            delta.B.copy_(u[:, :r] * root)
            delta.A.copy_(root.unsqueeze(1) * vh[:r])
        else:  # pragma: no cover - every registered class is handled above
            raise ValueError(f"no fitting method for {cls.__name__}")
    err = relative_error(x, delta.to_tensor().detach())
    return delta.to(device=dense.device, dtype=dense.dtype), err


# ----------------------------------------------------------------------------- tensorly objects
def to_tensorly(delta: "TaskDelta"):
    """The delta as tensorly's `CPTensor` / `TuckerTensor` / `TTTensor` (detached torch arrays;
    use them under tensorly's pytorch backend)."""
    import tensorly as tl

    d = lambda t: t.detach().clone()  # noqa: E731
    if delta.decomp == "cp":
        weights = torch.ones(delta.ranks, dtype=delta.in_factor.dtype, device=delta.in_factor.device)
        return tl.cp_tensor.CPTensor((weights, [d(delta.task_factor), d(delta.out_factor), d(delta.in_factor)]))
    if delta.decomp == "tucker":
        return tl.tucker_tensor.TuckerTensor(
            (d(delta.core), [d(delta.task_factor), d(delta.out_factor), d(delta.in_factor)])
        )
    if delta.decomp == "tt":
        return tl.tt_tensor.TTTensor([d(f) for f in delta.factors])
    raise TypeError(f"{type(delta).__name__} has no tensorly counterpart (CP, Tucker and TT do)")


def _as_torch(a) -> Tensor:
    import tensorly as tl

    return a.detach().clone() if isinstance(a, Tensor) else torch.as_tensor(tl.to_numpy(a)).clone()


def from_tensorly(cls: type["TaskDelta"], obj) -> "TaskDelta":
    """Build a delta from a tensorly CP/Tucker/TT tensor (or its `(weights, factors)`, `(core,
    factors)`, `factors` tuple); CP weights are folded into the task factor."""
    decomp = cls.decomp
    if decomp == "cp":
        weights, factors = obj
        a_t, a_o, a_i = (_as_torch(f) for f in factors)
        w = _as_torch(weights) if weights is not None else torch.ones(a_t.shape[1], dtype=a_t.dtype)
        delta = cls(shape=(a_t.shape[0], a_o.shape[0], a_i.shape[0]), ranks=a_t.shape[1]).to(a_t.dtype)
        with torch.no_grad():
            delta.task_factor.copy_(a_t * w)
            delta.out_factor.copy_(a_o)
            delta.in_factor.copy_(a_i)
        return delta
    if decomp == "tucker":
        core, factors = obj
        core = _as_torch(core)
        u_t, u_o, u_i = (_as_torch(f) for f in factors)
        delta = cls(shape=(u_t.shape[0], u_o.shape[0], u_i.shape[0]), ranks=tuple(core.shape)).to(core.dtype)
        with torch.no_grad():
            delta.core.copy_(core)
            delta.task_factor.copy_(u_t)
            delta.out_factor.copy_(u_o)
            delta.in_factor.copy_(u_i)
        return delta
    if decomp == "tt":
        g1, g2, g3 = (_as_torch(f) for f in obj)
        if g1.shape[0] != 1 or g3.shape[2] != 1:
            raise ValueError(f"a 3-core TT with boundary ranks 1 is expected, got {g1.shape}, {g3.shape}")
        delta = cls(shape=(g1.shape[1], g2.shape[1], g3.shape[1]), ranks=(g1.shape[2], g3.shape[0])).to(g1.dtype)
        with torch.no_grad():
            delta.task_core.copy_(g1)
            delta.out_core.copy_(g2)
            delta.in_core.copy_(g3)
        return delta
    raise TypeError(f"{cls.__name__} has no tensorly counterpart (CP, Tucker and TT do)")


# ----------------------------------------------------------------------------- tensorly-torch objects
def to_tltorch(delta: "TaskDelta"):
    """The delta as a tensorly-torch `CPTensor` / `TuckerTensor` / `TTTensor` (copies of the factors)."""
    import tltorch

    tl_obj = to_tensorly(delta)
    if delta.decomp == "cp":
        weights, factors = tl_obj
        return tltorch.CPTensor(torch.nn.Parameter(weights), [torch.nn.Parameter(f) for f in factors])
    if delta.decomp == "tucker":
        core, factors = tl_obj
        return tltorch.TuckerTensor(torch.nn.Parameter(core), [torch.nn.Parameter(f) for f in factors])
    return tltorch.TTTensor([torch.nn.Parameter(f) for f in tl_obj.factors])


def from_tltorch(cls: type["TaskDelta"], ft) -> "TaskDelta":
    """Build a delta from a tensorly-torch factorised tensor of the matching kind."""
    if cls.decomp == "cp":
        return from_tensorly(cls, (ft.weights, ft.factors))
    if cls.decomp == "tucker":
        return from_tensorly(cls, (ft.core, ft.factors))
    if cls.decomp == "tt":
        return from_tensorly(cls, list(ft.factors))
    raise TypeError(f"{cls.__name__} has no tensorly-torch counterpart (CP, Tucker and TT do)")
