"""Where a depth model's error comes from: the benchmark's absolute error split into what a per-image scale or
shift would fix and the shape within each image, beside what the output grid alone would cost.

`DepthErrorMeter.compute()`, over the valid pixels (target > 0) of a set, each a mean per valid pixel:

* ``abs_err``: |pred - gt|, the benchmark's metric (`DepthMeter`'s);
* ``scale_fit_err``: after each image's prediction is multiplied by median(gt) / median(pred) (by 1 when that
  median is not positive);
* ``shift_fit_err``: after median(gt) - median(pred) is added to it;
* ``median_err``: of the constant median(gt) per image (a predictor that knows each image's depth and no shape);
* ``scale_ratio``: median(pred) / median(gt), weighted by valid pixels (1: no bias towards near or far);
* ``pool<f>_err`` for each f in `pool` (default 2 and 8): of the truth itself average-pooled by f and resized
  back bilinearly, the error of a perfect prediction at 1/f of the resolution (pooled and resized over valid
  pixels only). For mSAM with 8-pixel patches, 1/2 is the mask decoder's output grid and 1/8 the token grid.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .tasks import DepthTask, Meter, _check_pair

__all__ = ["DepthErrorMeter", "DepthErrorTask"]

_FITS = ("abs_err", "scale_fit_err", "shift_fit_err", "median_err", "scale_ratio")


class DepthErrorMeter(Meter):
    """Sums of the errors above over valid pixels, and their count (`state()` sums across ranks)."""

    def __init__(self, pool: Sequence[int] = (2, 8)):
        if not all(isinstance(f, int) and f >= 1 for f in pool):
            raise ValueError(f"pool factors must be integers >= 1, got {tuple(pool)}")
        self.pool = tuple(pool)
        super().__init__(len(_FITS) + len(self.pool) + 1)

    @torch.no_grad()
    def update(self, logits: Tensor, target: Tensor) -> None:
        """logits, target: (B, 1, H, W) depth in the same unit; target 0 = invalid."""
        _check_pair("depth", logits, target, 1, 4)
        pred, gt = logits.detach().double(), target.double()
        valid = gt > 0
        sums = torch.zeros_like(self._stats)
        for p, g in zip(pred, gt):  # per image: its own medians
            v = g > 0
            n = v.sum()
            if not n:
                continue
            p, g = p[v], g[v]
            mp, mg = p.median(), g.median()
            scale = mg / mp if mp > 0 else torch.ones_like(mg)  # no sign flip for a negative prediction
            sums[:5] += torch.stack([(p - g).abs().sum(), (p * scale - g).abs().sum(), (p + mg - mp - g).abs().sum(),
                                     (mg - g).abs().sum(), mp / mg * n])
        w = valid.double()
        for i, f in enumerate(self.pool):  # the truth at 1/f resolution, over valid pixels only (both ways)
            num, den = F.avg_pool2d(gt * w, f, ceil_mode=True), F.avg_pool2d(w, f, ceil_mode=True)
            up_num, up_den = F.interpolate(torch.cat([num, den], 1), size=gt.shape[-2:], mode="bilinear",
                                           align_corners=False).split(1, dim=1)
            sums[5 + i] = (up_num / up_den.clamp_min(1e-12) - gt).abs()[valid].sum()
        sums[-1] = valid.sum()
        self._stats += sums.cpu()

    @property
    def count(self) -> float:
        return float(self._stats[-1])

    def compute(self) -> dict[str, float]:
        n = float(self._stats[-1])
        names = [*_FITS, *(f"pool{f}_err" for f in self.pool)]
        return {k: (float(v) / n if n else float("nan")) for k, v in zip(names, self._stats[:-1])}


class DepthErrorTask(DepthTask):
    """The depth task with `DepthErrorMeter` as its meter (`evaluate_tasks` then reports the decomposition)."""

    def new_meter(self) -> DepthErrorMeter:
        return DepthErrorMeter()
