"""Tasks derived from the synthetic renderer's maps: the targets against hand computations and under the
augmentation, their losses and meters, the task table, and a run of mSAM on them."""
import math

import pytest
import torch

from tensoradapt.data import NYUv2
from tensoradapt.data.derived import add_derived, curvature, edges, instance_offsets, nonplanar, occlusion_edges
from tensoradapt.data.nyuv2 import hflip
from tensoradapt.mtl import RENDERED_TASKS, MultiTaskMeter, RegressionTask, get_tasks, task_table


def test_targets_hand_computed():
    lab = torch.tensor([[0, 0, 1], [0, -1, 1], [2, 2, 2]])
    assert edges(lab)[0].tolist() == [[0, 1, 1], [1, -1, 1], [1, 0, 1]]
    d = torch.tensor([[[1.0, 1.0, 2.0], [1.0, 0.0, 2.0], [1.0, 1.05, 1.0]]])
    assert occlusion_edges(d)[0].tolist() == [[0, 1, 1], [0, -1, 1], [0, 0, 1]]  # 5 % is no jump, 100 % is
    off = instance_offsets(torch.tensor([[1, 1, 2], [1, 1, 2]]))
    assert torch.allclose(off * 3, torch.tensor([[[0.5, 0.5, 0.5], [-0.5, -0.5, -0.5]],
                                                 [[0.5, -0.5, 0.0], [0.5, -0.5, 0.0]]]))
    n = torch.zeros(3, 2, 3)
    n[2] = 1
    n[:, 1, 2] = torch.tensor([1.0, 0.0, 0.0])
    n[:, 0, 0] = 0  # invalid
    c = curvature(n)[0]
    assert c[0, 0] == -1 and c[1, 2] == pytest.approx(math.pi / 2) and c[1, 1] == pytest.approx(math.pi / 6)
    assert c[0, 1] == 0
    # non-planar where the mean turn of the normal exceeds `angle` (pi/6, pi/4, pi/2 here), planar where not
    assert nonplanar(n)[0].tolist() == [[-1, 0, 1], [0, 1, 1]]
    assert nonplanar(n, angle=1.0)[0].tolist() == [[-1, 0, 0], [0, 0, 1]]


def test_targets_follow_the_flip():
    g = torch.Generator().manual_seed(0)
    inst = torch.randint(1, 4, (6, 8), generator=g)
    sample = {"image": torch.rand(3, 6, 8, generator=g), "semantic": torch.randint(-1, 5, (6, 8), generator=g),
              "depth": torch.rand(1, 6, 8, generator=g) + 0.5,
              "instance": inst}
    # piecewise planar: four 3 x 4 facets, so the non-planar map holds creases (1) and planes (0)
    facets = torch.nn.functional.normalize(torch.randn(3, 2, 2, generator=g), dim=0)
    sample["normal"] = facets.repeat_interleave(3, dim=1).repeat_interleave(4, dim=2)
    names = ["boundary", "occlusion", "contour", "offset", "nonplanar"]
    before = add_derived(dict(sample), names)      # derived, then flipped by hand
    after = add_derived(hflip(sample), names)      # flipped, then derived (what the dataset does)
    assert set(before["nonplanar"].unique().tolist()) == {0.0, 1.0}
    for name in ["boundary", "occlusion", "contour", "nonplanar"]:
        assert torch.allclose(after[name], torch.flip(before[name], [-1]), atol=1e-6), name
    flipped = curvature(hflip(sample)["normal"])  # the angles, not only their threshold, follow the flip
    assert torch.allclose(flipped, torch.flip(curvature(sample["normal"]), [-1]), atol=1e-6)
    want = torch.flip(before["offset"], [-1]) * torch.tensor([1.0, -1.0]).view(2, 1, 1)
    assert torch.allclose(after["offset"], want, atol=1e-6)  # the x offsets change sign


def test_edge_and_regression_losses_and_meters():
    spec = RENDERED_TASKS["boundary"]
    target = torch.tensor([[[[1.0, 0.0, 0.0, -1.0]]]])
    logits = torch.tensor([[[[3.0, -2.0, 1.0, 50.0]]]])
    meter = spec.new_meter()
    meter.update(logits, target)
    m = meter.compute()  # tp 1, fp 1 (the third pixel), fn 0; the ignored pixel counts nowhere
    assert m["precision"] == pytest.approx(50.0) and m["recall"] == pytest.approx(100.0)
    assert m["f1"] == pytest.approx(100 * 2 / 3)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    want = (2 * bce(torch.tensor(3.0), torch.tensor(1.0)) + bce(torch.tensor(-2.0), torch.tensor(0.0))
            + bce(torch.tensor(1.0), torch.tensor(0.0))) / 4  # the edge weighs 2 (two non-edges per edge)
    assert float(spec.loss(logits, target)) == pytest.approx(float(want), rel=1e-6)
    reg = RegressionTask("r", 1, {"abs_err": -1}, "abs_err")  # ignores pixels whose target is negative
    t = torch.tensor([[[[0.5, -1.0]]]])
    p = torch.tensor([[[[0.25, 9.0]]]])
    assert float(reg.loss(p, t)) == pytest.approx(0.25)
    assert reg.evaluate(p, t)["abs_err"] == pytest.approx(0.25)


def test_the_task_table_holds_eight_tasks_and_refuses_unknown_ones():
    assert list(task_table()) == ["semantic", "depth", "normal", "boundary", "occlusion", "contour", "offset",
                                  "nonplanar"]
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['curvature'\]"):  # renamed when it was redefined
        get_tasks("semantic,curvature")
    assert list(get_tasks()) == ["semantic", "depth", "normal"]  # the default stays NYUv2's
    assert list(get_tasks("depth,offset")) == ["depth", "offset"]
    with pytest.raises(ValueError, match="unknown task"):
        get_tasks(["depth", "albedo"])
    tasks = get_tasks(list(task_table()))
    meter = MultiTaskMeter(tasks)
    assert meter.state().numel() > 0


def test_the_dataset_adds_the_derived_targets(tmp_path):
    from tensoradapt.data import generate_synthetic

    root = generate_synthetic(tmp_path / "d", n_train=2, n_val=1, height=24, width=32, workers=1)
    ds = NYUv2(root, "train", augment=True, size=(24, 32), derived=["boundary", "offset", "nonplanar"])
    s = ds[0]
    assert s["boundary"].shape == (1, 24, 32) and s["offset"].shape == (2, 24, 32) and "instance" in s
    assert set(s["boundary"].unique().tolist()) <= {-1.0, 0.0, 1.0} and (s["boundary"] == 1).any()
    assert {0.0, 1.0} <= set(s["nonplanar"].unique().tolist()) <= {-1.0, 0.0, 1.0}  # planes, and creases
    with pytest.raises(ValueError, match="derived names unknown target"):
        NYUv2(root, "train", derived=["albedo"])


def test_msam_trains_on_rendered_tasks(tmp_path):
    from tensoradapt.data import generate_synthetic
    from tensoradapt.train import finetune
    from tensoradapt.train.finetune import FinetuneConfig

    root = generate_synthetic(tmp_path / "d", n_train=4, n_val=2, height=48, width=64, workers=1)
    cfg = FinetuneConfig(model="tiny", checkpoint="none", data="nyuv2", data_root=str(root),
                         tasks=("depth", "boundary", "occlusion", "contour", "offset", "nonplanar"),
                         image_size=(48, 64)).updated(epochs=1, batch_size=2, progress=False, num_figures=1,
                                                      out=str(tmp_path / "run"))
    res = finetune.run(cfg)
    assert set(res["metrics"]) == {"depth", "boundary", "occlusion", "contour", "offset", "nonplanar"}
    assert all(math.isfinite(v) for t in res["metrics"].values() for v in t.values())
    assert (tmp_path / "run" / "predictions.png").is_file()
