"""Task-adapted projections: a frozen weight with a task delta beside it.

`TaskProjection` is what every adapted projection shares (the delta, its scale and dropout, the rows it
covers, task routing, merge / unmerge and merged inference); `TaskLinear` is the one that wraps an
`nn.Linear`. The projections of an `nn.MultiheadAttention` are adapted in `mha`.
"""
from __future__ import annotations

from abc import abstractmethod
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .deltas import TaskDelta, TaskIndex, check_task_index

__all__ = [
    "TaskProjection", "TaskLinear", "qkv_rows", "task_linears", "task_projections", "task_deltas",
    "check_dropout", "keep_called",
]


def check_dropout(dropout: float) -> float:
    """`dropout` as a float if it is a number in [0, 1), else a ValueError naming it."""
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
    return float(dropout)


def keep_called(module: nn.Module, args: tuple) -> None:
    """A forward pre-hook that does nothing, carried by every adapted module.

    torch's fused `TransformerEncoderLayer` path (eval mode, no autograd) reads its submodules' weights and
    calls none of them, so it would silently skip a task delta; it is not taken while any submodule has a
    forward hook. An adapted module is therefore never bypassed, whatever module `adapt` was called on.
    """
    return None


def refuse_nested(x: Tensor, module: nn.Module) -> None:
    """A clear error for a nested tensor (what torch's `TransformerEncoder` fast path feeds its layers)."""
    if x.is_nested:
        raise ValueError(
            f"{type(module).__name__} got a nested tensor: torch's TransformerEncoder packs a padded batch into "
            "one when its fast path is on; `adapt` turns that off for the encoders it sees "
            "(use_nested_tensor=False): set it on the encoder when adapting its layers one by one"
        )


QKV_PARTS = "qkv"


def qkv_rows(out_features: int, parts: str = "qkv") -> list[int] | None:
    """Rows of a fused `[q; k; v]` projection covered by `parts` (any non-empty subset of "qkv").

    Returns None when all three are selected (the delta covers every row).
    """
    if not parts or any(p not in QKV_PARTS for p in parts) or len(set(parts)) != len(parts):
        raise ValueError(f"qkv must be a non-empty subset of 'qkv' without repeats, got {parts!r}")
    if out_features % 3:
        raise ValueError(f"a fused qkv linear needs out_features divisible by 3, got {out_features}")
    if set(parts) == set(QKV_PARTS):
        return None
    d = out_features // 3
    return [r for p in QKV_PARTS if p in parts for r in range(QKV_PARTS.index(p) * d, (QKV_PARTS.index(p) + 1) * d)]


def _runs(rows: Sequence[int]) -> list[tuple[int, int]]:
    """Group sorted row indices into half-open contiguous runs [(start, stop), ...]."""
    runs: list[tuple[int, int]] = []
    for r in rows:
        if runs and runs[-1][1] == r:
            runs[-1] = (runs[-1][0], r + 1)
        else:
            runs.append((r, r + 1))
    return runs


class TaskProjection(nn.Module):
    """A frozen projection `x W^T + b` (W: (d_out_full, d_in)) plus `scale * delta(dropout(x), task)` on `rows`.

    Subclasses say where W and b live (`weight`, `bias`) and run the frozen projection (`_base`). The task
    is routed by `set_task` / `task_scope` (stored in `self.task`) so the host model's forward signature is
    unchanged; `layer(x, task=...)` overrides the routed task for one call. Ids routed there were checked
    once; the forward reads no id on the host.

    Args:
        delta: a `TaskDelta` of shape `(T, d_out, d_in)`, `d_out == len(rows)` (or `d_out_full`).
        shape: `(d_out_full, d_in)`, the shape of W.
        scale: multiplier of the delta; default `alpha / delta.rank` when `alpha` is given, else 1.
        alpha: LoRA-style alpha (used only when `scale` is None).
        dropout: dropout probability on the delta's input.
        rows: output rows the delta covers (e.g. q and v of a fused qkv); None = all rows.
        what: how errors name the projection.
        base: a submodule that holds W and b, registered as `base` ahead of the delta (parameter order).
    """

    def __init__(
        self,
        delta: TaskDelta,
        shape: tuple[int, int],
        scale: float | None = None,
        alpha: float | None = None,
        dropout: float = 0.0,
        rows: Sequence[int] | None = None,
        what: str = "the projection",
        base: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(delta, TaskDelta):
            raise TypeError(f"delta must be a TaskDelta, got {type(delta).__name__}")
        d_out_full, d_in = shape
        rows = None if rows is None else sorted(int(r) for r in rows)
        if rows is not None:
            if len(set(rows)) != len(rows) or rows[0] < 0 or rows[-1] >= d_out_full:
                raise ValueError(
                    f"rows must be distinct indices in [0, {d_out_full}), got {len(rows)} rows "
                    f"spanning [{rows[0]}, {rows[-1]}]"
                )
            if len(rows) == d_out_full:
                rows = None
        d_out = d_out_full if rows is None else len(rows)
        if delta.d_in != d_in or delta.d_out != d_out:
            raise ValueError(
                f"delta shape {delta.shape} does not fit {what}: expected (T, {d_out}, {d_in}) for "
                f"{'all' if rows is None else len(rows)} rows of a ({d_out_full}, {d_in}) weight"
            )
        dropout = check_dropout(dropout)
        if scale is None:
            scale = 1.0 if alpha is None else alpha / delta.rank
        if base is not None:
            self.base = base
        self.delta = delta
        self.scale = float(scale)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.rows: list[int] | None = rows
        self._runs = None if rows is None else _runs(rows)
        self.task: TaskIndex | None = None
        #: the dim of the input that per-sample task ids route along (0: batch-leading inputs)
        self.batch_dim = 0
        self.merged_task: int | None = None
        self._w0: Tensor | None = None
        # opt-in inference path: per-task merged weights, rebuilt when any parameter changes
        self.merged_inference = False
        self._cache: tuple[tuple, Tensor] | None = None
        self.register_forward_pre_hook(keep_called)

    @property
    @abstractmethod
    def weight(self) -> Tensor:
        """The frozen W: (d_out_full, d_in)."""

    @property
    @abstractmethod
    def bias(self) -> Tensor | None:
        """The frozen b: (d_out_full,) or None."""

    @abstractmethod
    def _base(self, x: Tensor) -> Tensor:
        """The frozen projection: (..., d_in) -> (..., d_out_full)."""

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    @property
    def num_tasks(self) -> int:
        return self.delta.num_tasks

    @property
    def merged(self) -> bool:
        return self.merged_task is not None

    def forward(self, x: Tensor, task: TaskIndex | None = None) -> Tensor:
        """x: (B', ..., d_in) -> (B', ..., d_out_full); `task` (default: the routed one) as in `TaskDelta`.

        With `batch_dim = 1` (set by `adapt` inside torch's sequence-first transformer layers) x is
        (S, B, ..., d_in) and per-sample ids route along dim 1.
        """
        refuse_nested(x, self)
        task = self.task if task is None else task
        if self.batch_dim == 1 and isinstance(task, Tensor) and task.dim() > 0 and x.dim() > 1:
            return self._forward(x.transpose(0, 1), task).transpose(0, 1)
        return self._forward(x, task)

    def _forward(self, x: Tensor, task: TaskIndex | None) -> Tensor:
        if self.merged_task is not None:
            self._check_merged_routing(task)
            return self._base(x)
        task = self._require(task)
        if self.merged_inference and not torch.is_grad_enabled():
            return self._forward_merged(x, task)
        if self._runs is None:
            # Fused: the delta's up-projection accumulates straight into the frozen GEMM's fresh 2-D
            # output (no (N, d_out) temporary, no separate add, no autograd copy of a view).
            y = self._base(x.reshape(-1, x.shape[-1]))
            y = self.delta.add_to_(y, self.dropout(x), task, self.scale)
            return y.view(*x.shape[:-1], y.shape[-1])
        return self._add_rows(self._base(x), self.delta(self.dropout(x), task))

    def add_delta(self, y: Tensor, x: Tensor, lo: int = 0) -> Tensor:
        """`y` plus the routed task's `scale * delta(dropout(x))` on the rows it covers, out of place.

        y: (B', ..., w), the frozen outputs of rows [lo, lo + w) (computed by the caller), x: (B', ..., d_in)
        batch-leading (per-sample ids route along dim 0). A merged projection returns y: W holds the delta.
        """
        if self.merged_task is not None:
            self._check_merged_routing(self.task)
            return y
        task = self._require(self.task)
        if not any(a < lo + y.shape[-1] and b > lo for a, b in self._runs or [(0, self.out_features)]):
            return y
        return self._add_rows(y, self.delta(self.dropout(x), task), lo)

    def _require(self, task: TaskIndex | None) -> TaskIndex:
        if task is None:
            raise RuntimeError(
                f"no task routed to this {type(self).__name__}: call set_task(model, task) or use "
                "`with task_scope(model, task):` before the forward"
            )
        return task

    def _check_merged_routing(self, routed: TaskIndex | None) -> None:
        """A merged layer serves only its merged task (a host sync for per-sample ids is acceptable:
        merged layers serve inference)."""
        if isinstance(routed, Tensor):
            others = routed[routed != self.merged_task]
            routed = int(others[0]) if others.numel() else self.merged_task
        if routed is not None and routed != self.merged_task:
            raise RuntimeError(
                f"layer is merged for task {self.merged_task} but task {routed} was routed; "
                "call unmerge() first"
            )

    def _add_rows(self, y: Tensor, d: Tensor, lo: int = 0) -> Tensor:
        """y: (..., w), outputs [lo, lo + w) of the projection, + scale * d: (..., d_out) on the covered rows."""
        d = d.to(y.dtype)
        hi = lo + y.shape[-1]
        if self._runs is None and (lo, hi) == (0, self.out_features):
            return torch.add(y, d, alpha=self.scale)
        pieces, start, offset = [], lo, 0
        for a, b in self._runs or [(0, self.out_features)]:
            a2, b2 = max(a, lo), min(b, hi)
            if a2 < b2:
                if a2 > start:
                    pieces.append(y[..., start - lo:a2 - lo])
                covered = d[..., offset + a2 - a:offset + b2 - a]
                pieces.append(torch.add(y[..., a2 - lo:b2 - lo], covered, alpha=self.scale))
                start = b2
            offset += b - a
        if start < hi:
            pieces.append(y[..., start - lo:])
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=-1)

    # ----------------------------------------------------------------- merged inference
    def _cache_key(self) -> tuple:
        params = [self.weight, *self.delta.parameters()]
        return (self.scale, *((p._version, p.data_ptr(), p.dtype, p.device) for p in params))

    @torch.no_grad()
    def merged_weights(self) -> Tensor:
        """`W0 + scale * delta[t]` for every task, (T, d_out_full, d_in); cached until a parameter changes.

        Materialises T weights (T times the layer's weight memory): an inference-only trade.
        """
        key = self._cache_key()
        if self._cache is None or self._cache[0] != key:
            update = self.delta.to_tensor().to(self.weight.dtype) * self.scale
            w = self.weight.detach().unsqueeze(0).repeat(self.delta.num_tasks, 1, 1)
            if self.rows is None:
                w += update
            else:
                w[:, torch.tensor(self.rows, device=w.device)] += update
            self._cache = (key, w)
        return self._cache[1]

    def _forward_merged(self, x: Tensor, task: TaskIndex) -> Tensor:
        """Inference with per-task merged weights: each run of same-task samples is one plain linear."""
        weights, bias = self.merged_weights(), self.bias
        if isinstance(task, Tensor) and task.dim() == 0:
            task = int(task)
        check_task_index(task, self.delta.num_tasks)
        if isinstance(task, int):
            return F.linear(x, weights[task], bias)
        ids = task.tolist()  # a host sync, acceptable on the no-grad inference path
        if x.shape[0] % len(ids):
            raise ValueError(
                f"{len(ids)} per-sample task ids do not divide the batch: x has leading dim {x.shape[0]}"
            )
        k = x.shape[0] // len(ids)
        pieces, start = [], 0
        for end in range(1, len(ids) + 1):  # runs of equal consecutive ids (task-major batches: T runs)
            if end == len(ids) or ids[end] != ids[start]:
                pieces.append(F.linear(x[start * k:end * k], weights[ids[start]], bias))
                start = end
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    # ----------------------------------------------------------------- merge / unmerge
    @torch.no_grad()
    def merge(self, task: int) -> None:
        """Fold `scale * delta[task]` into W0 (the frozen projection alone runs afterwards)."""
        check_task_index(task, self.delta.num_tasks)
        if self.merged_task is not None:
            if self.merged_task == task:
                return
            self.unmerge()
        self._w0 = self.weight.detach().clone()
        update = self.delta.matrix(task).to(self.weight.dtype) * self.scale
        if self.rows is None:
            self.weight.add_(update)
        else:
            rows = torch.tensor(self.rows, device=update.device)
            self.weight.index_add_(0, rows, update)
        self.merged_task = task

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore W0 bit-exactly from the copy taken by `merge`."""
        if self.merged_task is None:
            return
        self.weight.copy_(self._w0)
        self._w0 = None
        self.merged_task = None

    def extra_repr(self) -> str:
        rows = "all" if self.rows is None else f"{len(self.rows)} of {self.out_features}"
        merged = f", merged_task={self.merged_task}" if self.merged else ""
        return f"scale={self.scale:g}, rows={rows}{merged}"


class TaskLinear(TaskProjection):
    """`y = x W0^T + b + scale * delta(dropout(x), task)` for a token `x` of task `task`.

    The base linear is kept intact and frozen; the delta sits beside it (see `TaskProjection` for routing,
    merging and the arguments after `base`).

    Args:
        base: the frozen `nn.Linear` (weight `(d_out_full, d_in)`).
        delta: a `TaskDelta` of shape `(T, d_out, d_in)`, `d_out == len(rows)` (or `d_out_full`).
    """

    def __init__(
        self,
        base: nn.Linear,
        delta: TaskDelta,
        scale: float | None = None,
        alpha: float | None = None,
        dropout: float = 0.0,
        rows: Sequence[int] | None = None,
    ) -> None:
        if not isinstance(base, nn.Linear):
            raise TypeError(f"base must be an nn.Linear, got {type(base).__name__}")
        shape = (base.out_features, base.in_features)
        super().__init__(delta, shape, scale, alpha, dropout, rows, what="the linear", base=base)
        self.base.requires_grad_(False)

    # The host model may read these off what used to be an nn.Linear.
    @property
    def weight(self) -> Tensor:
        return self.base.weight

    @property
    def bias(self) -> Tensor | None:
        return self.base.bias

    def _base(self, x: Tensor) -> Tensor:
        return self.base(x)


def task_linears(model: nn.Module) -> Iterator[tuple[str, TaskLinear]]:
    """Every adapted `nn.Linear` of `model`, found by type."""
    for name, m in model.named_modules():
        if isinstance(m, TaskLinear):
            yield name, m


def task_projections(model: nn.Module) -> Iterator[tuple[str, TaskProjection]]:
    """Every adapted projection of `model` (`TaskLinear`s and adapted attention projections), found by type:
    what task routing and merging reach."""
    for name, m in model.named_modules():
        if isinstance(m, TaskProjection):
            yield name, m


def task_deltas(model: nn.Module) -> Iterator[tuple[str, TaskDelta]]:
    """Every task delta in `model`, found by type."""
    for name, m in model.named_modules():
        if isinstance(m, TaskDelta):
            yield name, m
