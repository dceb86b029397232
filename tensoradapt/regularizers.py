"""Regularisers on the factors of task deltas."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .deltas import ORTHOGONALITY_TERMS, TaskDelta

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


def orthogonality_penalty(module: nn.Module, terms: str = "paper") -> Tensor:
    """The paper's orthogonality penalty: the mean of `gram_deviation` over the factor matrices and core
    slices of every `TaskDelta` in `module` (a delta itself, or any model), pooled over all layers.
    0 when there is none.

    terms: which matrices each delta contributes (`TaskDelta.orthogonal_matrices`): "paper" — the paper's
        code's set (for Tucker: `out_factor`, `in_factor` and each core slice, 2 + r_task per layer);
        "all" — every factor (for Tucker the task factor as well).
    """
    if terms not in ORTHOGONALITY_TERMS:
        raise ValueError(f"terms must be one of {ORTHOGONALITY_TERMS}, got {terms!r}")
    deviations = [
        gram_deviation(m)
        for d in module.modules()
        if isinstance(d, TaskDelta)
        for m in d.orthogonal_matrices(terms)
    ]
    if not deviations:
        p = next(module.parameters(), None)
        return torch.zeros((), device=p.device if p is not None else None)
    return torch.stack(deviations).mean()
