"""The base class of every factorised task delta.

A task delta stands for a tensor `delta` of shape `(T, d_out, d_in)`: `delta[t]` is the update of a weight
`W0: (d_out, d_in)` for task `t`. Subclasses keep the tensor factorised and implement the forward pass as
a chain of small contractions with the input, so that neither the `(T, d_out, d_in)` tensor nor a
`(d_out, d_in)` matrix is ever formed in training.

Task routing (`task` argument of `forward`):
- an `int`: the whole batch belongs to that task;
- a `LongTensor` of shape `(B,)`: per-sample task ids. `x` is `(B', ..., d_in)` with `B' = k * B`; each id
  covers `k` consecutive leading rows (sample-major), which is how SAM's windowed attention splits an
  image into `k` windows. Shared projections run once over all samples; only the tiny per-task
  core/vector is gathered per sample.

A subclass that sets `decomp` registers itself (see `registry`); everything specific to a decomposition
lives in its class: rank names and bounds, default ranks, init, forward, fitting and tensorly interop.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Sequence

import torch
from torch import Tensor, nn

from ..fit import FitOptions, check_dense, relative_error, tensorly_numpy
from .registry import register_delta
from .task_index import TaskIndex, check_task_index

__all__ = ["TaskDelta", "TaskIndex", "INITS", "check_init", "ORTHOGONALITY_TERMS", "PAPER_WIDTH", "check_task_index"]

INITS = ("paper", "orthonormal")


def check_init(init: str) -> str:
    """`init` if it is one of `INITS`, else a ValueError naming it (used by every config that takes one)."""
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    return init
#: which factor matrices the orthogonality penalty covers: the paper's code's set, or every factor
ORTHOGONALITY_TERMS = ("paper", "all")
#: model widths from here up get a class's `paper_ranks` by default, narrower ones its `narrow_ranks`
PAPER_WIDTH = 512


class TaskDelta(nn.Module, ABC):
    """A factorised update tensor `(T, d_out, d_in)` over a task axis.

    `forward(x, task)` returns `x @ delta[task]^T` (no scale, no dropout: that is `TaskLinear`'s job).

    Args:
        shape: `(T, d_out, d_in)`.
        ranks: the decomposition's ranks, named by `rank_names` (an int when there is one).
        init: `"paper"` (zero core/last factor, other factors N(0, 1)) or `"orthonormal"` (zero core,
            factors with orthonormal columns). Both make the delta exactly zero.
    """

    #: short name used by `make_delta`, configs and reports; setting it registers the class
    decomp: ClassVar[str] = ""
    #: the names of the ranks, in the order `ranks` takes them (their number is the arity)
    rank_names: ClassVar[tuple[str, ...]] = ()
    #: default ranks at a model width >= PAPER_WIDTH, and below it (None: no default)
    paper_ranks: ClassVar[Any] = None
    narrow_ranks: ClassVar[Any] = None
    #: True when `delta[t]` is the same for every t (hard parameter sharing): a host then runs its encoder
    #: once for all tasks instead of once per task (mSAM's `is_task_agnostic`)
    task_shared: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("decomp"):
            register_delta(cls)

    def __init__(self, shape: Sequence[int], ranks, init: str = "paper") -> None:
        super().__init__()
        shape = tuple(int(s) for s in shape) if isinstance(shape, (tuple, list, torch.Size)) else shape
        if not isinstance(shape, tuple) or len(shape) != 3 or any(s <= 0 for s in shape):
            raise ValueError(f"shape must be (T, d_out, d_in) with positive sizes, got {shape!r}")
        check_init(init)
        self.shape: tuple[int, int, int] = shape
        self.num_tasks, self.d_out, self.d_in = shape
        self.ranks = self._validate_ranks(ranks)

    # ----------------------------------------------------------------- to implement
    @abstractmethod
    def reset_parameters(self, init: str = "paper") -> None:
        """Re-initialise so that the delta is exactly zero."""

    @abstractmethod
    def _down(self, x: Tensor, task: int | Tensor) -> Tensor:
        """Project to the bottleneck and mix in the task.

        int task: x (..., d_in) -> (..., r); per-sample ids (B,): x (B, n, d_in) -> (B, n, r).
        """

    @abstractmethod
    def _up(self, task: int | Tensor) -> Tensor:
        """The up-projection factor: (d_out, r) shared by the batch, or (B, d_out, r) per sample."""

    @abstractmethod
    def to_tensor(self) -> Tensor:
        """Materialise the full `(T, d_out, d_in)` tensor (for tests, fitting and merging only)."""

    @abstractmethod
    def orthogonal_matrices(self, terms: str = "paper") -> list[Tensor]:
        """The factor matrices and core slices the orthogonality penalty applies to (`terms`: one of
        `ORTHOGONALITY_TERMS`; "paper" is the paper's code's set, "all" every factor)."""

    @property
    @abstractmethod
    def rank(self) -> int:
        """Width of the bottleneck the input is projected to (LoRA's `r`, used for alpha / rank)."""

    def _validate_ranks(self, ranks):
        """The normalised ranks (`normalize_ranks`), or an error naming `ranks`.

        Subclasses extend this with their bounds.
        """
        return type(self).normalize_ranks(ranks)

    @classmethod
    def normalize_ranks(cls, ranks) -> int | tuple[int, ...]:
        """`ranks` as this class takes them, from an int, a sequence or a CLI string ("4,32,32"): an int for
        one-rank decompositions, else a tuple of `len(rank_names)` positive ints. Errors name the decomposition
        and its rank names; bounds that depend on the shape are the constructor's."""
        names = cls.rank_names
        arity, listed = len(names), ",".join(names)
        if isinstance(ranks, str):
            try:
                ranks = tuple(int(v) for v in ranks.replace(" ", "").split(",") if v != "")
            except ValueError:
                raise ValueError(
                    f"ranks for {cls.decomp} must be {arity} comma-separated ints ({listed}), got {ranks!r}"
                ) from None
        if isinstance(ranks, int) and not isinstance(ranks, bool) or isinstance(ranks, Tensor) and ranks.dim() == 0:
            ranks = (ranks,)
        try:
            values = tuple(ranks)
        except TypeError:
            raise TypeError(f"ranks for {cls.decomp} must be {arity} int(s) ({listed}), got {ranks!r}") from None
        if len(values) != arity:
            raise ValueError(f"ranks for {cls.decomp} must be {arity} value(s) ({listed}), got {values}")
        if arity == 1:
            return cls._positive_int(values[0], "ranks")
        return tuple(cls._positive_int(r, f"ranks[{k}]") for k, r in enumerate(values))

    def _fit(self, dense: Tensor, options: FitOptions) -> None:
        """Set the factors to fit `dense: (T, d_out, d_in)` (float64, CPU; no autograd, tensorly on numpy)."""
        raise NotImplementedError(f"{type(self).__name__} has no fitting method")

    # ----------------------------------------------------------------- shared
    @classmethod
    def default_ranks(cls, width: int):
        """The ranks used when none are given, for a model of embedding width `width`.

        `paper_ranks` (the paper's bottleneck of 32) from `PAPER_WIDTH` up, `narrow_ranks` below.
        """
        width = cls._positive_int(width, "width")
        ranks = cls.paper_ranks if width >= PAPER_WIDTH else cls.narrow_ranks
        if ranks is None:
            raise NotImplementedError(f"{cls.__name__} has no default ranks; pass ranks explicitly")
        return ranks

    def matrix(self, task: int) -> Tensor:
        """`delta[task]`: (d_out, d_in). Subclasses override with a cheaper contraction."""
        check_task_index(task, self.num_tasks)
        return self.to_tensor()[task]

    def forward(self, x: Tensor, task: TaskIndex) -> Tensor:
        """x: (B', ..., d_in) -> (B', ..., d_out); `task` an int or per-sample ids (B,) with B' = k B."""
        h, up, task = self._project(x, task)
        if up.dim() == 2:
            return h @ up.T
        return torch.bmm(h, up.transpose(1, 2)).reshape(*x.shape[:-1], self.d_out)

    def add_to_(self, y: Tensor, x: Tensor, task: TaskIndex, scale: float = 1.0) -> Tensor:
        """`y + scale * delta(x, task)`, fused into the up-projection GEMM; returns (N, d_out).

        y: (N, d_out) with N = x.shape[:-1].numel() (rows in x's order), x: (B', ..., d_in). With an up
        factor shared by the batch (Tucker, CP, shared LoRA, or any delta for an int task) the GEMM
        accumulates into `y` in place (`addmm_`), which saves the `(N, d_out)` temporary and the separate
        add; `y` must then be a fresh non-view tensor autograd allows to modify (e.g. the 2-D output of
        the frozen linear; an in-place update of a view would cost autograd a copy of the gradient).
        Per-sample up factors (TT, LoRA with mixed tasks) use one out-of-place `baddbmm`.
        """
        h, up, task = self._project(x, task)
        h, up = h.to(y.dtype), up.to(y.dtype)  # in-place ops are not autocast
        if up.dim() == 2:
            return y.addmm_(h.reshape(-1, h.shape[-1]), up.T, alpha=scale)
        y3 = y.view(up.shape[0], -1, self.d_out)
        return torch.baddbmm(y3, h, up.transpose(1, 2), alpha=scale).view(-1, self.d_out)

    def _project(self, x: Tensor, task: TaskIndex) -> tuple[Tensor, Tensor, TaskIndex]:
        """Validate, route, and return the bottleneck activations and the up factor.

        Ids already checked (where they were routed) are not read again: no host sync here.
        """
        if x.shape[-1] != self.d_in:
            raise ValueError(
                f"input last dim must be d_in={self.d_in}, got x of shape {tuple(x.shape)}"
            )
        if isinstance(task, Tensor) and task.dim() == 0:
            task = int(task)
        check_task_index(task, self.num_tasks)
        if isinstance(task, int):
            return self._down(x, task), self._up(task), task
        num = task.shape[0]
        if x.dim() < 2 or x.shape[0] % num:
            raise ValueError(
                f"{num} per-sample task ids do not divide the batch: x has leading dim "
                f"{x.shape[0] if x.dim() else 0} (expected a multiple k*{num}, sample-major)"
            )
        ids = task.to(x.device).long()
        # Sample-major: rows [i*k, (i+1)*k) of x belong to sample i, so a reshape groups them.
        h = self._down(x.reshape(num, -1, self.d_in), ids)
        up = self._up(ids)
        if up.dim() == 2:  # shared up factor: the per-sample part is done, restore x's layout
            h = h.reshape(*x.shape[:-1], h.shape[-1])
        return h, up, ids

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def compression_ratio(self, reference: str = "dense") -> float:
        """Parameters of a reference over this delta's parameters.

        reference: `"dense"` — T independent dense deltas `(T, d_out, d_in)`;
                   `"lora"` — T independent LoRAs at this delta's `rank`.
        """
        T, o, i = self.shape
        if reference == "dense":
            ref = T * o * i
        elif reference == "lora":
            ref = T * self.rank * (o + i)
        else:
            raise ValueError(f"reference must be 'dense' or 'lora', got {reference!r}")
        return ref / self.num_parameters

    def extra_repr(self) -> str:
        return (
            f"shape={self.shape}, ranks={self.ranks}, params={self.num_parameters:,}, "
            f"compression={self.compression_ratio():.1f}x vs dense"
        )

    # ----------------------------------------------------------------- fitting / interop (tensorly)
    @classmethod
    def from_tensor(
        cls, dense: Tensor, ranks, n_iter_max: int = 500, tol: float = 1e-12, random_state: int = 0,
        n_restarts: int = 0,
    ) -> tuple["TaskDelta", float]:
        """Fit this decomposition to `dense: (T, d_out, d_in)`; returns `(delta, relative_error)`.

        The delta has `dense`'s dtype and device; see `FitOptions` for the iteration controls.
        """
        x = check_dense(dense)
        delta = cls(shape=tuple(x.shape), ranks=ranks).double()
        with tensorly_numpy():
            delta._fit(x, FitOptions(n_iter_max, tol, random_state, n_restarts))
        err = relative_error(x, delta.to_tensor().detach())
        return delta.to(device=dense.device, dtype=dense.dtype), err

    def to_tensorly(self):
        """tensorly's CPTensor / TuckerTensor / TTTensor with copies of this delta's factors (torch
        arrays: use them under tensorly's pytorch backend)."""
        raise TypeError(f"{type(self).__name__} has no tensorly counterpart")

    @classmethod
    def from_tensorly(cls, obj) -> "TaskDelta":
        """Build a delta from the matching tensorly tensor (or its tuple form)."""
        raise TypeError(f"{cls.__name__} has no tensorly counterpart")

    def to_tltorch(self):
        """tensorly-torch's CPTensor / TuckerTensor / TTTensor with copies of this delta's factors."""
        raise TypeError(f"{type(self).__name__} has no tensorly-torch counterpart")

    @classmethod
    def from_tltorch(cls, ft) -> "TaskDelta":
        """Build a delta from a tensorly-torch factorised tensor of the matching kind."""
        raise TypeError(f"{cls.__name__} has no tensorly-torch counterpart")

    # ----------------------------------------------------------------- helpers for subclasses
    @staticmethod
    def _check_terms(terms: str) -> str:
        if terms not in ORTHOGONALITY_TERMS:
            raise ValueError(f"terms must be one of {ORTHOGONALITY_TERMS}, got {terms!r}")
        return terms

    @staticmethod
    def _positive_int(value, name: str) -> int:
        if isinstance(value, bool) or not isinstance(value, (int,)) and not (
            isinstance(value, Tensor) and value.dim() == 0
        ):
            raise TypeError(f"{name} must be a positive int, got {value!r}")
        value = int(value)
        if value <= 0:
            raise ValueError(f"{name} must be > 0 (a positive int), got {value}")
        return value

    @staticmethod
    def _bound(value: int, bound: int, what: str) -> None:
        if value > bound:
            raise ValueError(f"{what}: {value} exceeds {bound}")

    def _new(self, *size: int) -> nn.Parameter:
        return nn.Parameter(torch.empty(*size))

    @staticmethod
    def _init_factor(factor: Tensor, init: str) -> None:
        """N(0, 1) for the paper's init; a (semi-)orthonormal matrix otherwise."""
        with torch.no_grad():
            if init == "paper":
                factor.normal_(0.0, 1.0)
            else:
                nn.init.orthogonal_(factor)
