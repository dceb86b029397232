"""Tensor-train task delta (task mode first)."""
from __future__ import annotations

import torch
from torch import Tensor

from ..fit import FitOptions, as_torch, fill_, to_parameters
from .base import TaskDelta, check_task_index

__all__ = ["TTDelta"]


class TTDelta(TaskDelta):
    """A tensor train `G1 (1, T, r1)`, `G2 (r1, d_out, r2)`, `G3 (r2, d_in, 1)`.

    `delta[t] = (sum_a G1[0, t, a] G2[a]) @ G3[:, :, 0]`, i.e. a task-mixed `(d_out, r2)` output factor
    times a shared `(r2, d_in)` input projection.

    Args:
        shape: `(T, d_out, d_in)`.
        ranks: `(r1, r2)`; `r2 <= d_in`, `r2 <= r1 * d_out`, `r1 <= d_out * r2`.

    The zero-start init zeros the middle core `G2`.
    """

    decomp = "tt"
    rank_names = ("r1", "r2")
    paper_ranks, narrow_ranks = (16, 16), (4, 8)

    def __init__(self, shape, ranks, init: str = "paper") -> None:
        super().__init__(shape, ranks, init)
        r1, r2 = self.ranks
        T, d_out, d_in = self.shape
        self.task_core = self._new(1, T, r1)
        self.out_core = self._new(r1, d_out, r2)
        self.in_core = self._new(r2, d_in, 1)
        self.reset_parameters(init)

    def _validate_ranks(self, ranks):
        r1, r2 = super()._validate_ranks(ranks)
        self._bound(r2, self.d_in, "ranks r2 must be <= d_in")
        self._bound(r2, r1 * self.d_out, "ranks r2 must be <= r1 * d_out")
        self._bound(r1, self.d_out * r2, "ranks r1 must be <= d_out * r2")
        return (r1, r2)

    @property
    def factors(self) -> list[Tensor]:
        """The three TT cores, in tensorly's order."""
        return [self.task_core, self.out_core, self.in_core]

    @property
    def rank(self) -> int:
        return self.ranks[1]

    def reset_parameters(self, init: str = "paper") -> None:
        task = torch.empty(self.num_tasks, self.ranks[0], dtype=self.task_core.dtype)
        inp = torch.empty(self.d_in, self.ranks[1], dtype=self.in_core.dtype)
        self._init_factor(task, init)
        self._init_factor(inp, init)
        with torch.no_grad():
            self.task_core.copy_(task.unsqueeze(0))
            self.in_core.copy_(inp.T.unsqueeze(-1))
            self.out_core.zero_()

    def task_out_factors(self) -> Tensor:
        """`sum_a G1[0, t, a] G2[a]` for every task: (T, d_out, r2)."""
        return torch.einsum("ta,aob->tob", self.task_core[0], self.out_core)

    def _down(self, x: Tensor, task: int | Tensor) -> Tensor:
        return x @ self.in_core[:, :, 0].T  # (..., r2), shared by all tasks

    def _up(self, task: int | Tensor) -> Tensor:
        if isinstance(task, int):
            return torch.einsum("a,aob->ob", self.task_core[0, task], self.out_core)
        return self.task_out_factors()[task]  # (B, d_out, r2)

    def matrix(self, task: int) -> Tensor:
        check_task_index(task, self.num_tasks)
        out_t = torch.einsum("a,aob->ob", self.task_core[0, task], self.out_core)
        return out_t @ self.in_core[:, :, 0]

    def to_tensor(self) -> Tensor:
        return torch.einsum("tob,bi->toi", self.task_out_factors(), self.in_core[:, :, 0])

    def orthogonal_matrices(self, terms: str = "paper") -> list[Tensor]:
        """The task core, the input core and each slice of the middle core (both sets)."""
        self._check_terms(terms)
        return [self.task_core[0], self.in_core[:, :, 0].T, *self.out_core.unbind(0)]

    # ----------------------------------------------------------------- fitting / interop
    def _fit(self, dense: Tensor, options: FitOptions) -> None:
        """TT-SVD (not iterative: `options` do not apply)."""
        from tensorly.decomposition import tensor_train

        fill_(self.factors, tensor_train(dense.numpy(), rank=[1, *self.ranks, 1]))

    def to_tensorly(self):
        import tensorly as tl

        return tl.tt_tensor.TTTensor([f.detach().clone() for f in self.factors])

    @classmethod
    def from_tensorly(cls, obj) -> "TTDelta":
        """From a tensorly `TTTensor` or its list of three cores (boundary ranks 1)."""
        g1, g2, g3 = (as_torch(f) for f in obj)
        if g1.shape[0] != 1 or g3.shape[2] != 1:
            raise ValueError(f"a 3-core TT with boundary ranks 1 is expected, got {g1.shape}, {g3.shape}")
        delta = cls(shape=(g1.shape[1], g2.shape[1], g3.shape[1]), ranks=(g1.shape[2], g3.shape[0])).to(g1.dtype)
        fill_(delta.factors, [g1, g2, g3])
        return delta

    def to_tltorch(self):
        import tltorch

        return tltorch.TTTensor(to_parameters(self.to_tensorly().factors))

    @classmethod
    def from_tltorch(cls, ft) -> "TTDelta":
        return cls.from_tensorly(list(ft.factors))
