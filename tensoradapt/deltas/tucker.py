"""Tucker task delta: the paper's TA-LoRA."""
from __future__ import annotations

import torch
from torch import Tensor

from .base import TaskDelta, check_task_index

__all__ = ["TuckerDelta"]


class TuckerDelta(TaskDelta):
    """`delta[t] = out_factor @ core_t @ in_factor^T` with `core_t = sum_k task_factor[t, k] core[k]`.

    Args:
        shape: `(T, d_out, d_in)`.
        ranks: `(r_task, r_out, r_in)`; the paper's R3, R2, R1 (it uses `(4, 32, 32)`). `r_out <= d_out`,
            `r_in <= d_in`; `r_task` may exceed T but not `r_out * r_in`.

    Parameters: `core (r_task, r_out, r_in)`, `task_factor (T, r_task)`, `out_factor (d_out, r_out)`,
    `in_factor (d_in, r_in)`. The paper's init zeros the core and draws the factors from N(0, 1).
    """

    decomp = "tucker"

    def __init__(self, shape, ranks, init: str = "paper") -> None:
        super().__init__(shape, ranks, init)
        r_task, r_out, r_in = self.ranks
        T, d_out, d_in = self.shape
        self.core = self._new(r_task, r_out, r_in)
        self.task_factor = self._new(T, r_task)
        self.out_factor = self._new(d_out, r_out)
        self.in_factor = self._new(d_in, r_in)
        self.reset_parameters(init)

    def _validate_ranks(self, ranks):
        r_task, r_out, r_in = self._rank_tuple(ranks, 3, "(r_task, r_out, r_in)")
        self._bound(r_out, self.d_out, "ranks r_out must be <= d_out")
        self._bound(r_in, self.d_in, "ranks r_in must be <= d_in")
        self._bound(r_task, r_out * r_in, "ranks r_task must be <= r_out * r_in")
        return (r_task, r_out, r_in)

    @property
    def rank(self) -> int:
        return self.ranks[2]

    def reset_parameters(self, init: str = "paper") -> None:
        for f in (self.task_factor, self.out_factor, self.in_factor):
            self._init_factor(f, init)
        with torch.no_grad():
            self.core.zero_()

    def task_cores(self) -> Tensor:
        """`core_t` for every task: (T, r_out, r_in)."""
        return torch.einsum("tk,kor->tor", self.task_factor, self.core)

    def _down(self, x: Tensor, task: int | Tensor) -> Tensor:
        h = x @ self.in_factor  # shared projection, (..., r_in)
        if isinstance(task, int):
            core_t = torch.einsum("k,kor->or", self.task_factor[task], self.core)
            return h @ core_t.T
        return torch.bmm(h, self.task_cores()[task].transpose(1, 2))  # gather only (B, r_out, r_in)

    def _up(self, task: int | Tensor) -> Tensor:
        return self.out_factor

    def matrix(self, task: int) -> Tensor:
        check_task_index(task, self.num_tasks)
        core_t = torch.einsum("k,kor->or", self.task_factor[task], self.core)
        return self.out_factor @ core_t @ self.in_factor.T

    def to_tensor(self) -> Tensor:
        return torch.einsum("tor,Oo,Ir->tOI", self.task_cores(), self.out_factor, self.in_factor)

    def orthogonal_matrices(self) -> list[Tensor]:
        return [self.task_factor, self.out_factor, self.in_factor, *self.core.unbind(0)]
