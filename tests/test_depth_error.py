"""tensoradapt.mtl.depth_error: the decomposition of the depth error on hand-made cases."""
import pytest
import torch

from tensoradapt.mtl import NYUV2_TASKS
from tensoradapt.mtl.depth_error import DepthErrorMeter, DepthErrorTask


def ramp(b=2, h=8, w=8, lo=1.0, hi=5.0):
    g = torch.linspace(lo, hi, h * w).reshape(1, 1, h, w)
    return g.repeat(b, 1, 1, 1) * torch.arange(1, b + 1).view(b, 1, 1, 1)  # a different depth per image


def compute(pred, gt, **kw):
    m = DepthErrorMeter(**kw)
    m.update(pred, gt)
    return m.compute()


def test_a_per_image_scale_is_fitted_per_image():
    gt = ramp()
    pred = gt * torch.tensor([2.0, 0.5]).view(2, 1, 1, 1)  # each image off by its own factor
    r = compute(pred, gt)
    assert r["abs_err"] == pytest.approx(float((pred - gt).abs().mean()))
    assert r["scale_fit_err"] == pytest.approx(0.0, abs=1e-12)  # a batch-wide median would not fit both
    assert r["shift_fit_err"] > 0.1
    # the median ratio, weighted by pixels: (2 + 0.5) / 2
    assert r["scale_ratio"] == pytest.approx(1.25)


def test_a_shift_is_fitted_and_invalid_pixels_are_ignored():
    gt = ramp()
    pred = gt + 0.7
    gt[0, 0, :2] = 0.0                                # invalid
    pred[0, 0, :2] = 100.0                            # wildly wrong there: must not count
    r = compute(pred, gt)
    assert r["abs_err"] == pytest.approx(0.7)
    assert r["shift_fit_err"] == pytest.approx(0.0, abs=1e-6)  # float32 rounding of gt + 0.7
    assert r["median_err"] == pytest.approx(float(sum((g[g > 0] - g[g > 0].median()).abs().sum() for g in gt)
                                                  / (gt > 0).sum()))
    assert r["abs_err"] == pytest.approx(NYUV2_TASKS["depth"].evaluate(pred, gt)["abs_err"])


def test_pooled_truth_costs_nothing_on_a_constant_and_something_at_an_edge():
    flat = torch.full((1, 1, 8, 8), 3.0)
    assert compute(flat, flat)["pool2_err"] == pytest.approx(0.0)
    step = flat.clone()
    step[..., 3:] = 6.0                              # an edge inside a 4-pixel block
    r = compute(step, step, pool=(1, 4))
    assert r["pool1_err"] == pytest.approx(0.0, abs=1e-12)  # factor 1 is the truth itself
    assert r["pool4_err"] > 0.1
    half = flat.clone()
    half[..., :4] = 0.0                              # the left half invalid: no zeros may leak into the right
    r = compute(half, half, pool=(2, 4, 8))
    assert r["pool2_err"] == r["pool4_err"] == r["pool8_err"] == pytest.approx(0.0, abs=1e-12)


def test_a_negative_median_prediction_is_not_rescued_by_a_sign_flip():
    gt = ramp()
    r = compute(-gt, gt)
    assert r["scale_fit_err"] == pytest.approx(r["abs_err"])


def test_meters_merge_across_batches_and_ranks():
    gt, pred = ramp(b=4), ramp(b=4) * 1.1 + 0.2
    whole = DepthErrorMeter()
    whole.update(pred, gt)
    a, b = DepthErrorMeter(), DepthErrorMeter()
    a.update(pred[:1], gt[:1])
    b.update(pred[1:], gt[1:])
    a.merge(b.state())
    assert a.compute() == pytest.approx(whole.compute())
    assert isinstance(DepthErrorTask("depth", 1).new_meter(), DepthErrorMeter)
    for bad in ((0,), (2.5,)):
        with pytest.raises(ValueError, match="pool factors"):
            DepthErrorMeter(pool=bad)
