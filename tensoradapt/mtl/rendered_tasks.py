"""The tasks beyond NYUv2's three, derived exactly from the synthetic renderer's maps (`tensoradapt.data.derived`):
two families, each with its loss, metrics and their directions.

* `EdgeTask` (1 channel, a binary map of edges or regions; -1 = ignore): class-balanced binary cross-entropy on
  the logits; F1, precision and recall of `logit > 0` against the positives, pooled over the set (higher is
  better).
* `RegressionTask` (C channels; pixels whose target's first channel is -1 are ignored when `ignore_negative`):
  L1; the mean absolute error per valid pixel and channel (lower is better).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .tasks import Meter, TaskSpec, _check_pair

__all__ = ["EdgeMeter", "RegressionMeter", "EdgeTask", "RegressionTask", "RENDERED_TASKS"]


class EdgeMeter(Meter):
    """True positives, false positives and false negatives of `logit > 0` over the valid pixels."""

    def __init__(self):
        super().__init__(3)

    @torch.no_grad()
    def update(self, logits: Tensor, target: Tensor) -> None:
        _check_pair("edges", logits, target, 1, 4)
        valid = target >= 0
        pred, gt = (logits > 0) & valid, (target > 0.5) & valid
        self._stats += torch.stack([(pred & gt).sum(), (pred & ~gt).sum(), (~pred & gt).sum()]).double().cpu()

    @property
    def count(self) -> float:
        return float(self._stats.sum())

    def compute(self) -> dict[str, float]:
        tp, fp, fn = (float(v) for v in self._stats)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {"f1": 100 * f1, "precision": 100 * precision, "recall": 100 * recall}


class RegressionMeter(Meter):
    """Sum of absolute errors and the number of valid (pixel, channel) entries."""

    def __init__(self, channels: int, ignore_negative: bool):
        super().__init__(2)
        self.channels, self.ignore_negative = channels, ignore_negative

    @torch.no_grad()
    def update(self, logits: Tensor, target: Tensor) -> None:
        _check_pair("regression", logits, target, self.channels, 4)
        valid = (target[:, :1] >= 0 if self.ignore_negative else torch.ones_like(target[:, :1], dtype=torch.bool))
        valid = valid.expand_as(target)
        err = (logits.detach().double() - target.double()).abs()[valid]
        self._stats += torch.stack([err.sum(), valid.sum().double()]).cpu()

    @property
    def count(self) -> float:
        return float(self._stats[1])

    def compute(self) -> dict[str, float]:
        return {"abs_err": float(self._stats[0]) / max(float(self._stats[1]), 1.0)}


@dataclass(frozen=True)
class EdgeTask(TaskSpec):
    """A binary map (edges, or rare regions such as non-planar surfaces): sigmoid output; BCE weighted so
    positive and negative pixels count equally; F1 of the positives."""

    def activate(self, logits: Tensor) -> Tensor:
        return logits.sigmoid()

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        _check_pair(self.name, logits, target, 1, 4)
        valid = (target >= 0).float()
        edge = (target > 0.5).float() * valid
        n_edge, n_valid = edge.sum(), valid.sum()
        # class balance without a host sync: edges weigh (non-edges / edges), as HED does
        pos_weight = (n_valid - n_edge) / n_edge.clamp_min(1.0)
        weight = valid * torch.where(edge > 0, pos_weight, torch.ones_like(edge))
        per_pixel = F.binary_cross_entropy_with_logits(logits, edge, reduction="none")
        return (weight * per_pixel).sum() / (weight.sum().clamp_min(1.0))

    def new_meter(self) -> EdgeMeter:
        return EdgeMeter()


@dataclass(frozen=True)
class RegressionTask(TaskSpec):
    """A dense regression: identity output; L1 over the valid pixels; mean absolute error."""

    ignore_negative: bool = True

    def activate(self, logits: Tensor) -> Tensor:
        return logits

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        _check_pair(self.name, logits, target, self.channels, 4)
        if not self.ignore_negative:
            return (logits - target).abs().mean()
        valid = (target[:, :1] >= 0).float()
        return ((logits - target).abs() * valid).sum() / (valid.sum() * self.channels).clamp_min(1.0)

    def new_meter(self) -> RegressionMeter:
        return RegressionMeter(self.channels, self.ignore_negative)


_F1 = {"f1": 1, "precision": 1, "recall": 1}
#: name -> spec of every task `tensoradapt.data.derived` makes from the synthetic scenes' maps. Finished runs are
#: matched to a task by its name (`FinetuneConfig.tasks`), so a task whose definition changes takes a new name:
#: `nonplanar` replaced `curvature`, an L1 regression that predicting 0 everywhere minimised.
RENDERED_TASKS: dict[str, TaskSpec] = {
    "boundary": EdgeTask("boundary", 1, _F1, "f1"),          # edges between semantic classes
    "occlusion": EdgeTask("occlusion", 1, _F1, "f1"),        # depth discontinuities (> 10 % jumps)
    "contour": EdgeTask("contour", 1, _F1, "f1"),            # edges between object instances
    "offset": RegressionTask("offset", 2, {"abs_err": -1}, "abs_err", ignore_negative=False),  # to the centroid
    "nonplanar": EdgeTask("nonplanar", 1, _F1, "f1"),        # creases and curved surfaces (not planes)
}
