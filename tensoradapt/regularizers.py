"""Regularisers on the factors of task deltas."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .deltas.base import TaskDelta

__all__ = ["gram_deviation", "orthogonality_penalty"]


def gram_deviation(u: Tensor) -> Tensor:
    """`||U^T U - I||_F` for a tall `U (m, r)`; for a wide one (m < r) `||U U^T - I||_F`.

    A wide factor (e.g. a (T, r_task) task factor with r_task > T) cannot have orthonormal columns, so
    its rows are asked to be orthonormal instead.
    """
    if u.shape[0] < u.shape[1]:
        u = u.T
    gram = u.T @ u
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    return torch.linalg.matrix_norm(gram - eye)


def orthogonality_penalty(module: nn.Module) -> Tensor:
    """The paper's orthogonality penalty: mean of `gram_deviation` over every factor matrix and core
    slice of every `TaskDelta` in `module` (a delta itself, or any model). 0 when there is none."""
    terms = [
        gram_deviation(m)
        for d in module.modules()
        if isinstance(d, TaskDelta)
        for m in d.orthogonal_matrices()
    ]
    if not terms:
        p = next(module.parameters(), None)
        return torch.zeros((), device=p.device if p is not None else None)
    return torch.stack(terms).mean()
