"""LoRA baselines over a task axis: independent per-task LoRA and one LoRA shared by all tasks."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..fit import FitOptions, fill_
from .base import TaskDelta, check_task_index

__all__ = ["LoRADelta", "SharedLoRADelta"]


def _init_down(A: Tensor, init: str) -> None:
    """LoRA's down-projection init (PEFT: Kaiming-uniform with a=sqrt(5)); orthonormal rows otherwise."""
    with torch.no_grad():
        if init == "paper":
            nn.init.kaiming_uniform_(A, a=math.sqrt(5))
        else:
            nn.init.orthogonal_(A)


def _truncated_svd(m: Tensor, r: int) -> tuple[Tensor, Tensor]:
    """The best rank-r `B @ A ~= m` (Eckart-Young), balanced: `B = U_r S_r^1/2`, `A = S_r^1/2 V_r^T`.

    m: (..., d_out, d_in) -> B (..., d_out, r), A (..., r, d_in) (batched over leading dims).
    """
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    root = s[..., :r].sqrt()
    return u[..., :, :r] * root.unsqueeze(-2), root.unsqueeze(-1) * vh[..., :r, :]


class LoRADelta(TaskDelta):
    """T independent LoRAs, `delta[t] = B[t] @ A[t]` (LoRA-STL in one model).

    Args:
        shape: `(T, d_out, d_in)`.
        ranks: `r` (an int), `r <= min(d_out, d_in)`.

    Parameters: `A (T, r, d_in)`, `B (T, d_out, r)`; `B` starts at zero as in LoRA.
    """

    decomp = "lora"
    rank_names = ("r",)
    paper_ranks, narrow_ranks = 32, 8

    def __init__(self, shape, ranks, init: str = "paper") -> None:
        super().__init__(shape, ranks, init)
        T, d_out, d_in = self.shape
        self.A = self._new(T, self.ranks, d_in)
        self.B = self._new(T, d_out, self.ranks)
        self.reset_parameters(init)

    def _validate_ranks(self, ranks):
        r = super()._validate_ranks(ranks)
        self._bound(r, min(self.d_out, self.d_in), "ranks r must be <= min(d_out, d_in)")
        return r

    @property
    def rank(self) -> int:
        return self.ranks

    def reset_parameters(self, init: str = "paper") -> None:
        for t in range(self.num_tasks):
            _init_down(self.A[t], init)
        with torch.no_grad():
            self.B.zero_()

    def _down(self, x: Tensor, task: int | Tensor) -> Tensor:
        if isinstance(task, int):
            return x @ self.A[task].T
        return torch.bmm(x, self.A[task].transpose(1, 2))

    def _up(self, task: int | Tensor) -> Tensor:
        return self.B[task]

    def matrix(self, task: int) -> Tensor:
        check_task_index(task, self.num_tasks)
        return self.B[task] @ self.A[task]

    def to_tensor(self) -> Tensor:
        return torch.bmm(self.B, self.A)

    def orthogonal_matrices(self, terms: str = "paper") -> list[Tensor]:
        """Every task's `A[t]^T` and `B[t]` (both sets)."""
        self._check_terms(terms)
        return [*self.A.transpose(1, 2).unbind(0), *self.B.unbind(0)]

    def _fit(self, dense: Tensor, options: FitOptions) -> None:
        """Each task's truncated SVD (not iterative: `options` do not apply)."""
        B, A = _truncated_svd(dense, self.ranks)
        fill_([self.B, self.A], [B, A])


class SharedLoRADelta(LoRADelta):
    """One LoRA for every task, `delta[t] = B @ A` (hard parameter sharing, LoRA-HPS).

    Parameters: `A (r, d_in)`, `B (d_out, r)`. Task ids are validated but do not change the output.
    """

    decomp = "shared-lora"
    task_shared = True

    def __init__(self, shape, ranks, init: str = "paper") -> None:
        TaskDelta.__init__(self, shape, ranks, init)
        _, d_out, d_in = self.shape
        self.A = self._new(self.ranks, d_in)
        self.B = self._new(d_out, self.ranks)
        self.reset_parameters(init)

    def reset_parameters(self, init: str = "paper") -> None:
        _init_down(self.A, init)
        with torch.no_grad():
            self.B.zero_()

    def _down(self, x: Tensor, task: int | Tensor) -> Tensor:
        return x @ self.A.T

    def _up(self, task: int | Tensor) -> Tensor:
        return self.B

    def matrix(self, task: int) -> Tensor:
        check_task_index(task, self.num_tasks)
        return self.B @ self.A

    def to_tensor(self) -> Tensor:
        return (self.B @ self.A).expand(self.num_tasks, -1, -1)

    def orthogonal_matrices(self, terms: str = "paper") -> list[Tensor]:
        """`A^T` and `B` (both sets)."""
        self._check_terms(terms)
        return [self.A.T, self.B]

    def _fit(self, dense: Tensor, options: FitOptions) -> None:
        """The best single rank-r matrix for all tasks in the least-squares sense: truncate the mean."""
        B, A = _truncated_svd(dense.mean(0), self.ranks)
        fill_([self.B, self.A], [B, A])
