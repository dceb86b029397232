"""Task table, losses, set-level metrics on hand-computed cases, and delta-m."""
import math

import pytest
import torch
import torch.nn.functional as F

from tensoradapt.mtl import (
    NYUV2_TASKS,
    DepthTask,
    MultiTaskMeter,
    SemanticTask,
    TaskSpec,
    delta_m,
    delta_m_per_task,
    delta_m_report,
    get_tasks,
    task_losses,
    task_table,
)


def one_hot_logits(pred, C):
    """(B, H, W) labels -> (B, C, H, W) logits whose argmax is `pred`."""
    return F.one_hot(pred, C).permute(0, 3, 1, 2).float() * 5.0


def test_task_table():
    assert list(NYUV2_TASKS) == ["semantic", "depth", "normal"]
    assert [t.channels for t in NYUV2_TASKS.values()] == [13, 1, 3]
    assert all(isinstance(t, TaskSpec) for t in NYUV2_TASKS.values())
    assert NYUV2_TASKS["depth"].metrics == {"abs_err": -1, "rel_err": -1}
    assert NYUV2_TASKS["semantic"].main_metric == "mIoU"
    assert list(get_tasks(["normal", "semantic"])) == ["normal", "semantic"]
    assert list(get_tasks("depth,normal")) == ["depth", "normal"]
    assert list(get_tasks()) == list(NYUV2_TASKS)
    with pytest.raises(ValueError, match="unknown task.*'edges'"):
        get_tasks(["semantic", "edges"])
    with pytest.raises(ValueError, match="twice"):
        get_tasks(["depth", "depth"])
    with pytest.raises(ValueError, match="main_metric"):
        TaskSpec("x", 1, {"a": 1}, "b")
    with pytest.raises(ValueError, match="direction"):
        TaskSpec("x", 1, {"a": 2}, "a")
    assert NYUV2_TASKS["depth"].better(0.3, 0.4) and NYUV2_TASKS["semantic"].better(40.0, 30.0)


def test_activations():
    x = torch.randn(2, 13, 4, 5)
    p = NYUV2_TASKS["semantic"].activate(x)
    torch.testing.assert_close(p.sum(1), torch.ones(2, 4, 5))
    assert torch.equal(p.argmax(1), x.argmax(1))
    n = NYUV2_TASKS["normal"].activate(torch.randn(2, 3, 4, 5))
    torch.testing.assert_close(n.norm(dim=1), torch.ones(2, 4, 5))
    d = torch.randn(2, 1, 4, 5)
    assert torch.equal(NYUV2_TASKS["depth"].activate(d), d)


def test_semantic_metrics_hand_computed():
    task = SemanticTask("semantic", 3, {"mIoU": 1, "pixel_acc": 1}, "mIoU")
    target = torch.tensor([[[0, 1], [1, -1]]])
    pred = torch.tensor([[[0, 1], [0, 2]]])  # the ignored pixel's prediction must not count
    m = task.new_meter()
    m.update(one_hot_logits(pred, 3), target)
    # confusion over valid pixels: (t0,p0), (t1,p1), (t1,p0): IoU0 = 1/2, IoU1 = 1/2, class 2 absent
    assert m.matrix.tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 0]]
    r = m.compute()
    assert r["mIoU"] == pytest.approx(50.0)
    assert r["pixel_acc"] == pytest.approx(100 * 2 / 3)
    with pytest.raises(ValueError, match="outside"):
        m.update(one_hot_logits(pred, 3), torch.tensor([[[0, 3], [1, -1]]]))


def test_semantic_is_accumulated_over_the_set_not_averaged_per_batch():
    task = NYUV2_TASKS["semantic"]
    t1 = torch.zeros(1, 1, 1, dtype=torch.long)               # 1 pixel, right
    t2 = torch.ones(1, 1, 3, dtype=torch.long)                 # 3 pixels, all wrong (predict 0)
    m = task.new_meter()
    m.update(one_hot_logits(torch.zeros(1, 1, 1, dtype=torch.long), 13), t1)
    m.update(one_hot_logits(torch.zeros(1, 1, 3, dtype=torch.long), 13), t2)
    r = m.compute()
    assert r["pixel_acc"] == pytest.approx(25.0)                # not (100 + 0) / 2
    assert r["mIoU"] == pytest.approx(100 * (1 / 4 + 0) / 2)    # IoU0 = 1 / (1 + 3), IoU1 = 0


def test_semantic_loss():
    task = NYUV2_TASKS["semantic"]
    logits = torch.randn(2, 13, 3, 4, requires_grad=True)
    target = torch.randint(0, 13, (2, 3, 4))
    target[0, 0, :] = -1
    valid = target != -1
    logp = torch.log_softmax(logits, 1).permute(0, 2, 3, 1)[valid]
    manual = -logp[torch.arange(logp.shape[0]), target[valid]].mean()
    torch.testing.assert_close(task.loss(logits, target), manual)
    empty = task.loss(logits, torch.full((2, 3, 4), -1))
    assert float(empty.detach()) == 0.0
    empty.backward()  # still differentiable
    with pytest.raises(ValueError, match="logits must be"):
        task.loss(torch.randn(2, 5, 3, 4), target)
    with pytest.raises(ValueError, match="disagree"):
        task.loss(torch.randn(2, 13, 6, 8), target)


def test_depth_hand_computed():
    task = NYUV2_TASKS["depth"]
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    gt = torch.tensor([[[[2.0, 0.0], [3.0, 8.0]]]])   # 0 = invalid
    assert float(task.loss(pred, gt)) == pytest.approx(5 / 3)
    r = task.evaluate(pred, gt)
    assert r["abs_err"] == pytest.approx(5 / 3)
    assert r["rel_err"] == pytest.approx((0.5 + 0 + 0.5) / 3)
    # per valid pixel over the whole set, not per batch
    m = task.new_meter()
    m.update(torch.ones(1, 1, 1, 1), torch.full((1, 1, 1, 1), 2.0))   # 1 pixel, error 1
    m.update(torch.ones(1, 1, 1, 3), torch.ones(1, 1, 1, 3))         # 3 pixels, error 0
    assert m.compute()["abs_err"] == pytest.approx(0.25)
    assert float(task.loss(pred, torch.zeros_like(gt))) == 0.0


def test_normal_hand_computed():
    task = NYUV2_TASKS["normal"]
    s20, c20 = math.sin(math.radians(20)), math.cos(math.radians(20))
    # predictions (unnormalised) at angles 0, 20, 45 degrees from +z, and one invalid target pixel
    pred = torch.tensor([[0.0, 0.0, 2.0], [0.0, s20, c20], [1.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    gt = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    logits = pred.T.reshape(1, 3, 1, 4)
    target = gt.T.reshape(1, 3, 1, 4)
    r = task.evaluate(logits, target)
    assert r["mean_angle"] == pytest.approx((0 + 20 + 45) / 3, abs=1e-6)
    assert r["median_angle"] == pytest.approx(20.0, abs=0.01)
    assert r["within_11.25"] == pytest.approx(100 / 3)
    assert r["within_22.5"] == pytest.approx(200 / 3)
    assert r["within_30"] == pytest.approx(200 / 3)
    expected_loss = (0 + (1 - c20) + (1 - math.cos(math.radians(45)))) / 3
    assert float(task.loss(logits, target)) == pytest.approx(expected_loss, abs=1e-6)


def test_normal_median_on_many_pixels():
    g = torch.Generator().manual_seed(0)
    gt = F.normalize(torch.randn(2, 3, 20, 30, generator=g), dim=1)
    pred = gt + 0.5 * torch.randn(2, 3, 20, 30, generator=g)
    ang = torch.rad2deg(torch.acos((F.normalize(pred, dim=1) * gt).sum(1).clamp(-1, 1)))
    r = NYUV2_TASKS["normal"].evaluate(pred, gt)
    assert r["median_angle"] == pytest.approx(float(ang.median()), abs=0.02)
    assert r["mean_angle"] == pytest.approx(float(ang.mean()), abs=1e-4)


def test_meter_states_merge_like_one_pass():
    g = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(4):
        batch = {"semantic": torch.randint(-1, 13, (2, 6, 8), generator=g),
                 "depth": torch.rand(2, 1, 6, 8, generator=g) * (torch.rand(2, 1, 6, 8, generator=g) > 0.2),
                 "normal": F.normalize(torch.randn(2, 3, 6, 8, generator=g), dim=1)}
        out = {"semantic": torch.randn(2, 13, 6, 8, generator=g), "depth": torch.rand(2, 1, 6, 8, generator=g),
               "normal": torch.randn(2, 3, 6, 8, generator=g)}
        batches.append((out, batch))
    whole = MultiTaskMeter()
    a, b = MultiTaskMeter(), MultiTaskMeter()
    for k, (out, batch) in enumerate(batches):
        whole.update(out, batch)
        (a if k % 2 else b).update(out, batch)
    merged = MultiTaskMeter().load_state(a.state() + b.state())   # what an all-reduce gives

    def close(x, y):
        assert x.keys() == y.keys()
        for t in x:
            assert x[t] == pytest.approx(y[t], rel=1e-12), t

    close(merged.compute(), whole.compute())
    assert MultiTaskMeter().load_state(a.state()).compute() != whole.compute()  # half the set differs
    close(a.merge(b.state()).compute(), whole.compute())
    losses = task_losses(*batches[0])
    assert set(losses) == {"semantic", "depth", "normal"} and all(v.dim() == 0 for v in losses.values())


def test_delta_m_hand_computed_and_signs():
    base = {"semantic": {"mIoU": 50.0, "pixel_acc": 70.0}, "depth": {"abs_err": 0.5, "rel_err": 0.2}}
    new = {"semantic": {"mIoU": 55.0, "pixel_acc": 63.0}, "depth": {"abs_err": 0.4, "rel_err": 0.25}}
    per = delta_m_per_task(new, base)
    assert per["semantic"] == pytest.approx((10 - 10) / 2)
    assert per["depth"] == pytest.approx((20 - 25) / 2)
    assert delta_m(new, base) == pytest.approx((0 - 2.5) / 2)
    # lower error -> positive; higher accuracy -> positive; the reverse -> negative
    better = {"depth": {"abs_err": 0.4, "rel_err": 0.1}}
    worse = {"depth": {"abs_err": 0.6, "rel_err": 0.3}}
    assert delta_m(better, base) > 0 > delta_m(worse, base)
    up = {"semantic": {"mIoU": 60.0, "pixel_acc": 80.0}}
    assert delta_m(up, base) > 0 > delta_m({"semantic": base["semantic"]}, up)
    assert delta_m(base, base) == 0.0
    rep = delta_m_report(new, base, "single-task")
    assert rep["baseline"] == "single-task" and rep["delta_m"] == pytest.approx(-1.25)
    with pytest.raises(ValueError, match="baseline has no results for task 'normal'"):
        delta_m({"normal": {}}, base)
    with pytest.raises(ValueError, match="lacks metric 'rel_err'"):
        delta_m({"depth": {"abs_err": 0.1}}, base)
    with pytest.raises(ValueError, match="non-zero base"):
        delta_m(new, {"semantic": {"mIoU": 0.0, "pixel_acc": 70.0}, "depth": base["depth"]})
    with pytest.raises(ValueError, match="baseline_name"):
        delta_m_report(new, base, "")
    # a custom table
    table = {"d": DepthTask("d", 1, {"abs_err": -1}, "abs_err")}
    assert delta_m({"d": {"abs_err": 1.0}}, {"d": {"abs_err": 2.0}}, tasks=table) == pytest.approx(50.0)


def _some_target(spec: TaskSpec, g: torch.Generator) -> torch.Tensor:
    """A target for `spec` at (2, ., 6, 8) with a few invalid pixels, in each task's own encoding."""
    if isinstance(spec, SemanticTask):
        t = torch.randint(0, spec.channels, (2, 6, 8), generator=g)
        t[0, :2] = spec.ignore_index
        return t
    t = torch.rand(2, spec.channels, 6, 8, generator=g)
    if spec.name == "normal":
        t = t - 0.5
    if spec.name in ("depth", "normal"):
        t[0, :, :2] = 0.0           # 0 marks invalid depth / normals
    else:
        t[0, :, :2] = -1.0          # -1 marks ignored pixels of the rendered tasks
    return t


@pytest.mark.parametrize("name", list(task_table()))
def test_loss_traces_without_host_sync(name):
    """Every task's loss is one graph (no `bool(tensor)` branch, which would sync a GPU every step), and the
    traced loss and its gradient equal the eager ones, also when no pixel is valid."""
    spec = task_table()[name]
    g = torch.Generator().manual_seed(0)
    target = _some_target(spec, g)
    traced = torch.compile(spec.loss, backend="eager", fullgraph=True)
    invalid = torch.full_like(target, spec.ignore_index if isinstance(spec, SemanticTask) else
                              (0 if name in ("depth", "normal") else -1))
    for t in (target, invalid):
        logits = torch.randn(2, spec.channels, 6, 8, generator=g, requires_grad=True)
        want = spec.loss(logits, t)
        (want_grad,) = torch.autograd.grad(want, logits)
        got = traced(logits, t)
        (got_grad,) = torch.autograd.grad(got, logits)
        assert torch.isfinite(want)
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(got_grad, want_grad)
    if getattr(spec, "ignore_negative", True):  # a task that ignores pixels: none valid, no loss, no gradient
        assert float(want.detach()) == 0.0 and not want_grad.any()
