"""Tucker task delta: the paper's TA-LoRA."""
from __future__ import annotations

import torch
from torch import Tensor

from ..fit import FitOptions, as_torch, fill_, to_parameters
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
    rank_names = ("r_task", "r_out", "r_in")
    paper_ranks, narrow_ranks = (4, 32, 32), (4, 8, 8)

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
        r_task, r_out, r_in = super()._validate_ranks(ranks)
        self._bound(r_out, self.d_out, "ranks r_out must be <= d_out")
        self._bound(r_in, self.d_in, "ranks r_in must be <= d_in")
        self._bound(r_task, r_out * r_in, "ranks r_task must be <= r_out * r_in")
        return (r_task, r_out, r_in)

    @property
    def rank(self) -> int:
        return self.ranks[2]

    @property
    def factors(self) -> list[Tensor]:
        """`[task_factor, out_factor, in_factor]`, in tensorly's mode order."""
        return [self.task_factor, self.out_factor, self.in_factor]

    def reset_parameters(self, init: str = "paper") -> None:
        for f in self.factors:
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

    def orthogonal_matrices(self, terms: str = "paper") -> list[Tensor]:
        """"paper": the paper's code's set, `out_factor`, `in_factor` and each core slice `core[k]`
        (2 + r_task matrices); "all" adds the task factor."""
        paper = [self.out_factor, self.in_factor, *self.core.unbind(0)]
        return [self.task_factor, *paper] if self._check_terms(terms) == "all" else paper

    # ----------------------------------------------------------------- fitting / interop
    def _fit(self, dense: Tensor, options: FitOptions) -> None:
        """HOOI; a rank above its mode's size is fitted at the mode's size and zero-padded."""
        from tensorly.decomposition import tucker

        fit_ranks = [min(r, n) for r, n in zip(self.ranks, dense.shape)]
        core, factors = tucker(dense.numpy(), rank=fit_ranks, n_iter_max=options.n_iter_max, tol=options.tol,
                               random_state=options.random_state)
        fill_([self.core, *self.factors], [core, *factors])

    def to_tensorly(self):
        import tensorly as tl

        factors = [f.detach().clone() for f in self.factors]
        return tl.tucker_tensor.TuckerTensor((self.core.detach().clone(), factors))

    @classmethod
    def from_tensorly(cls, obj) -> "TuckerDelta":
        """From a tensorly `TuckerTensor` or `(core, [task, out, in factors])`."""
        core, factors = obj
        core = as_torch(core)
        u_t, u_o, u_i = (as_torch(f) for f in factors)
        delta = cls(shape=(u_t.shape[0], u_o.shape[0], u_i.shape[0]), ranks=tuple(core.shape)).to(core.dtype)
        fill_([delta.core, *delta.factors], [core, u_t, u_o, u_i])
        return delta

    def to_tltorch(self):
        import tltorch

        core, factors = self.to_tensorly()
        return tltorch.TuckerTensor(*to_parameters([core]), to_parameters(factors))

    @classmethod
    def from_tltorch(cls, ft) -> "TuckerDelta":
        return cls.from_tensorly((ft.core, ft.factors))
