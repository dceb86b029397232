"""The task table: one :class:`TaskSpec` per task (channels, output activation, loss, metrics, direction).

As in LibMTL, this table is the one source of truth for losses, metrics and Δm. Shapes: logits are
(B, C, H, W); targets are ``semantic`` (B, H, W) int64 with -1 = ignore, ``depth`` (B, 1, H, W) float
with 0 = invalid, ``normal`` (B, 3, H, W) float unit vectors with all-zero = invalid.

Ratios (mIoU, pixel accuracy, the share of normals within a threshold) are in percent, as MTL papers
report them; errors are in their unit (metres for depth, degrees for normals).

Every meter accumulates *sufficient statistics* over the whole set in one float64 tensor
(``meter.state()``) that can be summed across processes (``dist.all_reduce``) and loaded back with
``meter.merge(state)`` / ``meter.load_state(state)``; ``compute()`` turns it into metrics.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .._utils.vectors import unit

__all__ = [
    "TaskSpec", "SemanticTask", "DepthTask", "NormalTask", "Meter", "ConfusionMeter", "DepthMeter",
    "NormalMeter", "NYUV2_TASKS", "get_tasks", "task_table",
]


def _check_pair(name: str, logits: Tensor, target: Tensor, channels: int, target_dims: int) -> None:
    if logits.dim() != 4 or logits.shape[1] != channels:
        raise ValueError(f"{name}: logits must be (B, {channels}, H, W), got {tuple(logits.shape)}")
    if target.dim() != target_dims:
        raise ValueError(f"{name}: target must have {target_dims} dims, got {tuple(target.shape)}")
    if logits.shape[0] != target.shape[0] or logits.shape[-2:] != target.shape[-2:]:
        raise ValueError(f"{name}: logits {tuple(logits.shape)} and target {tuple(target.shape)} disagree on "
                         f"batch or spatial size (resize the logits to the target first)")


class Meter:
    """Accumulates a task's sufficient statistics over a data set.

    ``update(logits, target)`` adds a batch; ``compute()`` -> {metric: float}; ``state()`` -> a float64
    tensor that sums across processes; ``merge(state)`` adds such a tensor; ``reset()``.
    """

    def __init__(self, size: int):
        self._stats = torch.zeros(size, dtype=torch.float64)

    def reset(self) -> None:
        self._stats.zero_()

    def state(self) -> Tensor:
        """A copy of the sufficient statistics (1-D float64); sum these across ranks, then :meth:`load_state`."""
        return self._stats.clone()

    def merge(self, state: Tensor) -> "Meter":
        """Add another meter's :meth:`state` (e.g. from another rank)."""
        state = torch.as_tensor(state, dtype=torch.float64).reshape(-1).cpu()
        if state.shape != self._stats.shape:
            raise ValueError(f"state has {state.numel()} entries, this meter needs {self._stats.numel()}")
        self._stats += state
        return self

    def load_state(self, state: Tensor) -> "Meter":
        """Replace the statistics by `state` (e.g. after an all-reduce of :meth:`state`)."""
        self._stats.zero_()
        return self.merge(state)

    @property
    def count(self) -> float:
        raise NotImplementedError

    def update(self, logits: Tensor, target: Tensor) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def compute(self) -> dict[str, float]:  # pragma: no cover - abstract
        raise NotImplementedError


class ConfusionMeter(Meter):
    """Confusion matrix (C x C, rows = truth, columns = prediction) over all non-ignored pixels.

    mIoU is the mean over classes that occur (in truth or prediction) of TP / (TP + FP + FN);
    pixel_acc = trace / total; both in percent, as MTL papers report them.
    """

    def __init__(self, num_classes: int, ignore_index: int = -1):
        super().__init__(num_classes * num_classes)
        self.num_classes = num_classes
        self.ignore_index = ignore_index

    @torch.no_grad()
    def update(self, logits: Tensor, target: Tensor) -> None:
        _check_pair("semantic", logits, target, self.num_classes, 3)
        pred = logits.argmax(dim=1)
        self.update_labels(pred, target)

    @torch.no_grad()
    def update_labels(self, pred: Tensor, target: Tensor) -> None:
        """Add predicted labels (B, H, W) against targets (B, H, W)."""
        C = self.num_classes
        t = target.reshape(-1).long()
        p = pred.reshape(-1).long()
        keep = t != self.ignore_index
        t, p = t[keep], p[keep]
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= C):
            raise ValueError(f"semantic target holds labels outside [0, {C}) other than {self.ignore_index}: "
                             f"min {int(t.min())}, max {int(t.max())}")
        self._stats += torch.bincount((t * C + p).cpu(), minlength=C * C).to(torch.float64)

    @property
    def matrix(self) -> Tensor:
        return self._stats.view(self.num_classes, self.num_classes)

    @property
    def count(self) -> float:
        return float(self._stats.sum())

    def compute(self) -> dict[str, float]:
        cm = self.matrix
        total = cm.sum()
        if total == 0:
            return {"mIoU": float("nan"), "pixel_acc": float("nan")}
        tp = cm.diag()
        union = cm.sum(0) + cm.sum(1) - tp
        present = union > 0
        iou = tp[present] / union[present]
        return {"mIoU": 100.0 * float(iou.mean()), "pixel_acc": 100.0 * float(tp.sum() / total)}

    def per_class_iou(self) -> Tensor:
        """(C,) IoU per class, NaN for classes absent from both truth and prediction."""
        cm = self.matrix
        tp = cm.diag()
        union = cm.sum(0) + cm.sum(1) - tp
        return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))


class DepthMeter(Meter):
    """Sums of |pred - gt| and |pred - gt| / gt over valid pixels (gt > 0), and their count.

    abs_err and rel_err are the averages per valid pixel over the whole set."""

    def __init__(self):
        super().__init__(3)

    @torch.no_grad()
    def update(self, logits: Tensor, target: Tensor) -> None:
        _check_pair("depth", logits, target, 1, 4)
        pred = logits.detach().double()
        gt = target.double()
        valid = gt > 0
        err = (pred - gt).abs()[valid]
        self._stats += torch.stack([err.sum(), (err / gt[valid]).sum(), valid.sum().double()]).cpu()

    @property
    def count(self) -> float:
        return float(self._stats[2])

    def compute(self) -> dict[str, float]:
        n = float(self._stats[2])
        if n == 0:
            return {"abs_err": float("nan"), "rel_err": float("nan")}
        return {"abs_err": float(self._stats[0]) / n, "rel_err": float(self._stats[1]) / n}


class NormalMeter(Meter):
    """Angular error (degrees) between L2-normalised predictions and targets over valid pixels.

    Statistics: sum of angles, count, counts below 11.25 / 22.5 / 30 degrees, and a histogram of
    angles with `bins` bins over [0, 180] (default 0.01 degree wide) from which the median is read
    (exact to within one bin, linearly interpolated inside it).
    """

    THRESHOLDS = (11.25, 22.5, 30.0)

    def __init__(self, bins: int = 18000):
        super().__init__(5 + bins)
        self.bins = bins

    @torch.no_grad()
    def update(self, logits: Tensor, target: Tensor) -> None:
        _check_pair("normal", logits, target, 3, 4)
        pred = unit(logits.detach().double(), dim=1)
        gt = target.double()
        valid = gt.abs().sum(dim=1) > 0
        cos = (pred * unit(gt, dim=1)).sum(dim=1)[valid].clamp(-1.0, 1.0)
        ang = torch.rad2deg(torch.acos(cos))
        stats = torch.zeros_like(self._stats)
        stats[0] = ang.sum()
        stats[1] = ang.numel()
        for k, th in enumerate(self.THRESHOLDS):
            stats[2 + k] = (ang < th).sum()
        idx = (ang * (self.bins / 180.0)).long().clamp_(0, self.bins - 1)
        stats[5:] = torch.bincount(idx.cpu(), minlength=self.bins).to(torch.float64)
        self._stats += stats.cpu()

    @property
    def count(self) -> float:
        return float(self._stats[1])

    def _median(self) -> float:
        hist = self._stats[5:]
        n = float(hist.sum())
        cum = torch.cumsum(hist, 0)
        half = 0.5 * n
        k = int(torch.searchsorted(cum, torch.tensor([half], dtype=torch.float64))[0])
        k = min(k, self.bins - 1)
        before = float(cum[k - 1]) if k > 0 else 0.0
        inside = float(hist[k])
        frac = (half - before) / inside if inside > 0 else 0.0
        width = 180.0 / self.bins
        return (k + frac) * width

    def compute(self) -> dict[str, float]:
        n = float(self._stats[1])
        if n == 0:
            return {"mean_angle": float("nan"), "median_angle": float("nan"), "within_11.25": float("nan"),
                    "within_22.5": float("nan"), "within_30": float("nan")}
        return {
            "mean_angle": float(self._stats[0]) / n,
            "median_angle": self._median(),
            "within_11.25": 100.0 * float(self._stats[2]) / n,
            "within_22.5": 100.0 * float(self._stats[3]) / n,
            "within_30": 100.0 * float(self._stats[4]) / n,
        }


def _masked_mean(total: Tensor, valid: Tensor) -> Tensor:
    """`total` (a sum over the valid pixels) / their count; 0, still differentiable, when none is valid.

    Dividing by the clamped count instead of branching on `valid.any()` keeps the loss free of host syncs."""
    return total / valid.sum().clamp_min(1)


@dataclass(frozen=True)
class TaskSpec:
    """One row of the task table.

    Attributes:
        name: the key of the task's target in a batch and of its output.
        channels: output channels C of the task head.
        metrics: metric name -> direction (+1 higher is better, -1 lower is better).
        main_metric: the metric to select checkpoints on.
    """

    name: str
    channels: int
    metrics: Mapping[str, int] = field(default_factory=dict)
    main_metric: str = ""

    def __post_init__(self) -> None:
        if self.channels <= 0:
            raise ValueError(f"channels must be positive, got {self.channels}")
        bad = {k: v for k, v in self.metrics.items() if v not in (1, -1)}
        if bad:
            raise ValueError(f"metric directions must be +1 or -1, got {bad}")
        if self.metrics and self.main_metric not in self.metrics:
            raise ValueError(f"main_metric {self.main_metric!r} is not one of the metrics {list(self.metrics)}")

    def activate(self, logits: Tensor) -> Tensor:
        """Output activation for prediction / visualisation (B, C, H, W) -> (B, C, H, W)."""
        raise NotImplementedError

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """Scalar training loss of logits (B, C, H, W) against the target; invalid pixels are ignored."""
        raise NotImplementedError

    def new_meter(self) -> Meter:
        raise NotImplementedError

    def evaluate(self, logits: Tensor, target: Tensor) -> dict[str, float]:
        """Metrics of a single batch (a fresh meter, updated once)."""
        meter = self.new_meter()
        meter.update(logits, target)
        return meter.compute()

    def better(self, a: float, b: float) -> bool:
        """True if main-metric value `a` is better than `b`."""
        d = self.metrics[self.main_metric]
        return (a - b) * d > 0


@dataclass(frozen=True)
class SemanticTask(TaskSpec):
    """Semantic segmentation: log-softmax + NLL ignoring `ignore_index`; mIoU and pixel accuracy."""

    ignore_index: int = -1

    def activate(self, logits: Tensor) -> Tensor:
        """Class probabilities (softmax over C); argmax of them is the predicted label."""
        return logits.softmax(dim=1)

    def predict(self, logits: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, H, W) int64 labels."""
        return logits.argmax(dim=1)

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        _check_pair(self.name, logits, target, self.channels, 3)
        total = F.nll_loss(F.log_softmax(logits, dim=1), target.long(), ignore_index=self.ignore_index,
                           reduction="sum")
        return _masked_mean(total, target != self.ignore_index)

    def new_meter(self) -> ConfusionMeter:
        return ConfusionMeter(self.channels, self.ignore_index)


@dataclass(frozen=True)
class DepthTask(TaskSpec):
    """Depth: identity output; L1 over valid pixels (target > 0); absolute and relative error."""

    def activate(self, logits: Tensor) -> Tensor:
        return logits

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        _check_pair(self.name, logits, target, 1, 4)
        valid = target > 0
        return _masked_mean(torch.where(valid, (logits - target).abs(), 0.0).sum(), valid)

    def new_meter(self) -> DepthMeter:
        return DepthMeter()


@dataclass(frozen=True)
class NormalTask(TaskSpec):
    """Surface normals: L2-normalised output; 1 - cosine over valid pixels; angle statistics."""

    def activate(self, logits: Tensor) -> Tensor:
        return unit(logits, dim=1)

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        _check_pair(self.name, logits, target, 3, 4)
        valid = target.abs().sum(dim=1) > 0
        cos = (unit(logits, dim=1) * unit(target, dim=1)).sum(dim=1)
        return _masked_mean(torch.where(valid, 1.0 - cos, 0.0).sum(), valid)

    def new_meter(self) -> NormalMeter:
        return NormalMeter()


NYUV2_TASKS: dict[str, TaskSpec] = {
    "semantic": SemanticTask("semantic", 13, {"mIoU": 1, "pixel_acc": 1}, "mIoU"),
    "depth": DepthTask("depth", 1, {"abs_err": -1, "rel_err": -1}, "abs_err"),
    "normal": NormalTask("normal", 3, {"mean_angle": -1, "median_angle": -1, "within_11.25": 1,
                                       "within_22.5": 1, "within_30": 1}, "mean_angle"),
}


def task_table() -> dict[str, TaskSpec]:
    """Every known task: NYUv2's three, then those derived from the synthetic renderer's maps
    (`rendered_tasks.RENDERED_TASKS`: boundary, occlusion, contour, offset, nonplanar)."""
    from .rendered_tasks import RENDERED_TASKS

    return {**NYUV2_TASKS, **RENDERED_TASKS}


def get_tasks(names: Sequence[str] | str | None = None) -> dict[str, TaskSpec]:
    """The task table (`task_table`) restricted to `names`, in the order given (None: the NYUv2 tasks).

    A comma-separated string ("semantic,depth") is accepted too. The order fixes the task ids.
    """
    if names is None:
        return dict(NYUV2_TASKS)
    table = task_table()
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    names = list(names)
    if not names:
        raise ValueError(f"names must name at least one task of {list(table)}")
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; available: {list(table)}")
    if len(set(names)) != len(names):
        raise ValueError(f"names lists a task twice: {names}")
    return {n: table[n] for n in names}
