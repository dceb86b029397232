"""CP (CANDECOMP/PARAFAC) task delta."""
from __future__ import annotations

import torch
from torch import Tensor

from .base import TaskDelta, check_task_index

__all__ = ["CPDelta"]


class CPDelta(TaskDelta):
    """`delta[t] = out_factor @ diag(task_factor[t]) @ in_factor^T`: a rank-R CP tensor.

    Args:
        shape: `(T, d_out, d_in)`.
        ranks: the CP rank `R` (an int).

    Parameters: `task_factor (T, R)`, `out_factor (d_out, R)`, `in_factor (d_in, R)`. The task factor
    plays the role of Tucker's (diagonal) core, so the zero-start init zeros it.
    """

    decomp = "cp"

    def __init__(self, shape, ranks, init: str = "paper") -> None:
        super().__init__(shape, ranks, init)
        R = self.ranks
        T, d_out, d_in = self.shape
        self.task_factor = self._new(T, R)
        self.out_factor = self._new(d_out, R)
        self.in_factor = self._new(d_in, R)
        self.reset_parameters(init)

    def _validate_ranks(self, ranks):
        return self._single_rank(ranks, "R")

    @property
    def rank(self) -> int:
        return self.ranks

    def reset_parameters(self, init: str = "paper") -> None:
        self._init_factor(self.out_factor, init)
        self._init_factor(self.in_factor, init)
        with torch.no_grad():
            self.task_factor.zero_()

    def _down(self, x: Tensor, task: int | Tensor) -> Tensor:
        h = x @ self.in_factor
        if isinstance(task, int):
            return h * self.task_factor[task]
        return h * self.task_factor[task].unsqueeze(1)

    def _up(self, task: int | Tensor) -> Tensor:
        return self.out_factor

    def matrix(self, task: int) -> Tensor:
        check_task_index(task, self.num_tasks)
        return (self.out_factor * self.task_factor[task]) @ self.in_factor.T

    def to_tensor(self) -> Tensor:
        return torch.einsum("tr,or,ir->toi", self.task_factor, self.out_factor, self.in_factor)

    def orthogonal_matrices(self) -> list[Tensor]:
        return [self.out_factor, self.in_factor]
