"""CP (CANDECOMP/PARAFAC) task delta."""
from __future__ import annotations

import torch
from torch import Tensor

from ..fit import FitOptions, as_torch, fill_, relative_error, to_parameters
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
    rank_names = ("R",)
    paper_ranks, narrow_ranks = 32, 8

    def __init__(self, shape, ranks, init: str = "paper") -> None:
        super().__init__(shape, ranks, init)
        R = self.ranks
        T, d_out, d_in = self.shape
        self.task_factor = self._new(T, R)
        self.out_factor = self._new(d_out, R)
        self.in_factor = self._new(d_in, R)
        self.reset_parameters(init)

    @property
    def rank(self) -> int:
        return self.ranks

    def reset_parameters(self, init: str = "paper") -> None:
        self._init_factor(self.out_factor, init)
        self._init_factor(self.in_factor, init)
        with torch.no_grad():
            self.task_factor.zero_()

    @property
    def factors(self) -> list[Tensor]:
        """`[task_factor, out_factor, in_factor]`, in tensorly's mode order."""
        return [self.task_factor, self.out_factor, self.in_factor]

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

    def orthogonal_matrices(self, terms: str = "paper") -> list[Tensor]:
        self._check_terms(terms)  # the task factor is the (diagonal) core: never in the penalty
        return [self.out_factor, self.in_factor]

    # ----------------------------------------------------------------- fitting / interop
    def _fit(self, dense: Tensor, options: FitOptions) -> None:
        """CP-ALS from an SVD init, then `n_restarts` random inits; the best fit wins. tensorly pads an SVD
        init beyond a mode with random columns."""
        import tensorly as tl
        from tensorly.decomposition import parafac

        best = None
        for k, init in enumerate(["svd"] + ["random"] * options.n_restarts):
            cp = parafac(dense.numpy(), rank=self.ranks, n_iter_max=options.n_iter_max, init=init,
                         tol=options.tol, random_state=options.random_state + k)
            err = relative_error(dense, as_torch(tl.cp_to_tensor(cp)))
            if best is None or err < best[0]:
                best = (err, cp)
        weights, (a_t, a_o, a_i) = best[1]
        fill_(self.factors, [a_t * weights, a_o, a_i])

    def to_tensorly(self):
        import tensorly as tl

        weights = torch.ones(self.ranks, dtype=self.in_factor.dtype, device=self.in_factor.device)
        return tl.cp_tensor.CPTensor((weights, [f.detach().clone() for f in self.factors]))

    @classmethod
    def from_tensorly(cls, obj) -> "CPDelta":
        """From a tensorly `CPTensor` or `(weights, factors)`; the weights are folded into the task factor."""
        weights, factors = obj
        a_t, a_o, a_i = (as_torch(f) for f in factors)
        w = as_torch(weights) if weights is not None else torch.ones(a_t.shape[1], dtype=a_t.dtype)
        delta = cls(shape=(a_t.shape[0], a_o.shape[0], a_i.shape[0]), ranks=a_t.shape[1]).to(a_t.dtype)
        fill_(delta.factors, [a_t * w, a_o, a_i])
        return delta

    def to_tltorch(self):
        import tltorch

        weights, factors = self.to_tensorly()
        return tltorch.CPTensor(*to_parameters([weights]), to_parameters(factors))

    @classmethod
    def from_tltorch(cls, ft) -> "CPDelta":
        return cls.from_tensorly((ft.weights, ft.factors))
