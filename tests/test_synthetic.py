"""The synthetic scene generator: geometric consistency, ranges, determinism, the on-disk layout, caching."""
import json
import os
import runpy
import sys

import numpy as np
import pytest

from tensoradapt.data.synthetic import (
    CLASSES,
    camera_intrinsics,
    ensure_synthetic,
    generate_synthetic,
    synthesize,
    synthetic_is_complete,
)


def _depth_normals(depth, K):
    """Normals from a depth map (H, W): back-project, central differences, cross product (H-2, W-2, 3)."""
    H, W = depth.shape
    u = np.arange(W) + 0.5
    v = np.arange(H) + 0.5
    P = np.stack([(u[None, :] - K[0, 2]) / K[0, 0] * depth, (v[:, None] - K[1, 2]) / K[1, 1] * depth, depth], -1)
    du = P[1:-1, 2:] - P[1:-1, :-2]
    dv = P[2:, 1:-1] - P[:-2, 1:-1]
    n = np.cross(du, dv)
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    n[np.sum(n * P[1:-1, 1:-1], -1) > 0] *= -1  # towards the camera
    return n


def _planar_interior(sample):
    """Pixels (H-2, W-2) whose 3x3 neighbourhood lies on one object with one normal (a planar patch)."""
    inst, N = sample["instance"], sample["normal"]
    H, W = inst.shape
    ok = np.ones((H - 2, W - 2), bool)
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            ok &= inst[1 + di:H - 1 + di, 1 + dj:W - 1 + dj] == inst[1:-1, 1:-1]
            ok &= np.abs(N[1 + di:H - 1 + di, 1 + dj:W - 1 + dj] - N[1:-1, 1:-1]).max(-1) < 1e-4
    return ok


@pytest.mark.parametrize("index", [0, 1, 2])
def test_normals_agree_with_normals_from_depth(index):
    s = synthesize(index, seed=0, height=72, width=96)
    K = camera_intrinsics(72, 96)
    n_depth = _depth_normals(s["depth"][..., 0], K)
    planar = _planar_interior(s)
    assert planar.mean() > 0.5  # most of an indoor view is planar
    cos = np.clip(np.sum(n_depth * s["normal"][1:-1, 1:-1], -1), -1, 1)
    angle = np.degrees(np.arccos(cos))
    assert np.median(angle[planar]) < 5.0
    assert np.percentile(angle[planar], 90) < 5.0
    # a wrong normal convention (e.g. a flipped x axis) must show up
    flipped = s["normal"][1:-1, 1:-1] * np.array([-1.0, 1.0, 1.0])
    bad = np.degrees(np.arccos(np.clip(np.sum(n_depth * flipped, -1), -1, 1)))
    assert np.median(bad[planar & (np.abs(s["normal"][1:-1, 1:-1, 0]) > 0.3)]) > 20.0


def test_ranges_shapes_and_dtypes():
    for index in range(3):
        s = synthesize(index, seed=5, height=48, width=64)
        assert s["image"].shape == (48, 64, 3) and s["image"].dtype == np.float32
        assert s["label"].shape == (48, 64) and s["label"].dtype == np.int16
        assert s["depth"].shape == (48, 64, 1) and s["depth"].dtype == np.float32
        assert s["normal"].shape == (48, 64, 3) and s["normal"].dtype == np.float32
        assert s["instance"].shape == (48, 64) and s["instance"].dtype == np.int32
        assert 0.0 <= s["image"].min() and s["image"].max() <= 1.0
        assert s["label"].min() >= -1 and s["label"].max() < len(CLASSES)
        valid = s["depth"][..., 0] > 0
        assert valid.all()  # the room is closed: every ray hits something
        assert np.all(s["depth"][valid] < 15.0)
        assert np.allclose(np.linalg.norm(s["normal"], axis=-1), 1.0, atol=1e-5)
        assert (s["instance"] > 0).all()


def test_scene_contents_cover_many_classes():
    seen = set()
    for index in range(12):
        seen |= set(np.unique(synthesize(index, seed=0, height=48, width=64)["label"]).tolist())
    # walls, floor, furniture of several kinds; -1 (unlabelled clutter) may or may not be in view
    assert {CLASSES.index("wall"), CLASSES.index("floor")} <= seen
    assert len(seen - {-1}) >= 8


def test_deterministic_by_seed_and_resolution_independent():
    a = synthesize(4, seed=3, height=32, width=48)
    b = synthesize(4, seed=3, height=32, width=48)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    c = synthesize(4, seed=4, height=32, width=48)
    assert not np.array_equal(a["depth"], c["depth"])
    d = synthesize(4, seed=3, stream="val", height=32, width=48)
    assert not np.array_equal(a["depth"], d["depth"])
    # the same scene at 3x the resolution: low-res pixel centres are high-res pixel centres (3i+1, 3j+1)
    hi = synthesize(4, seed=3, height=96, width=144)
    np.testing.assert_allclose(a["depth"], hi["depth"][1::3, 1::3], rtol=1e-4)
    assert (a["label"] == hi["label"][1::3, 1::3]).mean() > 0.999


def test_generate_writes_the_nyuv2_layout(tmp_path):
    root = generate_synthetic(tmp_path / "syn", n_train=3, n_val=2, seed=1, height=24, width=32, workers=1)
    for split, n in (("train", 3), ("val", 2)):
        for key, shape in (("image", (24, 32, 3)), ("label", (24, 32)), ("depth", (24, 32, 1)),
                           ("normal", (24, 32, 3)), ("instance", (24, 32))):
            files = sorted((root / split / key).glob("*.npy"))
            assert [f.name for f in files] == [f"{i}.npy" for i in range(n)]
            assert np.load(files[0]).shape == shape
    meta = json.loads((root / "meta.json").read_text())
    assert meta["classes"] == list(CLASSES)
    assert meta["params"]["n_train"] == 3 and meta["images_per_s"] > 0
    np.testing.assert_allclose(meta["K"], camera_intrinsics(24, 32))
    assert synthetic_is_complete(root, 3, 2, 1, 24, 32)
    assert not synthetic_is_complete(root, 4, 2, 1, 24, 32)
    # the file content is the rendered scene
    s = synthesize(1, seed=1, stream="val", height=24, width=32)
    np.testing.assert_array_equal(np.load(root / "val" / "depth" / "1.npy"), s["depth"])


def test_output_does_not_depend_on_workers(tmp_path):
    a = generate_synthetic(tmp_path / "a", n_train=16, n_val=0, height=16, width=24, workers=1)
    b = generate_synthetic(tmp_path / "b", n_train=16, n_val=0, height=16, width=24, workers=2)
    for i in (0, 7, 15):
        for key in ("image", "label", "normal"):
            np.testing.assert_array_equal(np.load(a / "train" / key / f"{i}.npy"),
                                          np.load(b / "train" / key / f"{i}.npy"))


def test_ensure_reuses_and_regenerates(tmp_path, monkeypatch):
    monkeypatch.setenv("TENSORADAPT_CACHE", str(tmp_path / "cache"))
    kw = dict(n_train=2, n_val=1, height=16, width=24, progress=False)
    root = ensure_synthetic(**kw)
    assert str(root).startswith(str(tmp_path / "cache"))
    f = root / "train" / "image" / "1.npy"
    stamp = f.stat().st_mtime_ns
    os.utime(f, ns=(stamp - 10**9, stamp - 10**9))  # so a rewrite would be visible
    assert ensure_synthetic(**kw) == root
    assert f.stat().st_mtime_ns == stamp - 10**9  # reused
    (root / "val" / "normal" / "0.npy").unlink()  # incomplete -> rebuilt
    assert not synthetic_is_complete(root, 2, 1, 0, 16, 24)
    ensure_synthetic(**kw)
    assert (root / "val" / "normal" / "0.npy").exists()
    assert f.stat().st_mtime_ns != stamp - 10**9
    (root / "meta.json").unlink()  # interrupted before the completion marker -> rebuilt
    ensure_synthetic(**kw)
    assert synthetic_is_complete(root, 2, 1, 0, 16, 24)


def test_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="n_train"):
        generate_synthetic(tmp_path, n_train=-1, n_val=1)
    with pytest.raises(ValueError, match="height"):
        generate_synthetic(tmp_path, n_train=1, n_val=1, height=2)
    with pytest.raises(ValueError, match="stream"):
        synthesize(0, stream="test")


def test_progress_bar_only_when_asked(tmp_path, capsys):
    generate_synthetic(tmp_path / "quiet", n_train=2, n_val=0, height=16, width=24, workers=1, progress=False)
    assert capsys.readouterr().err == ""
    generate_synthetic(tmp_path / "loud", n_train=2, n_val=0, height=16, width=24, workers=1, progress=True)
    assert "synthetic scenes" in capsys.readouterr().err


def test_command_line(tmp_path, capsys, monkeypatch):
    def cli(*args):  # as `python -m tensoradapt.data.synthetic ARGS` (runpy is what -m uses)
        monkeypatch.setattr(sys, "argv", ["synthetic", *args])
        runpy.run_module("tensoradapt.data.synthetic", run_name="__main__")
        return capsys.readouterr().out

    size = ["--height", "16", "--width", "24"]
    out = cli("--root", str(tmp_path / "cli"), "--n-train", "2", "--n-val", "1", "--workers", "1", *size)
    assert "2 train + 1 val scenes" in out
    assert synthetic_is_complete(tmp_path / "cli", 2, 1, 0, 16, 24)
    assert "rendered 1 scenes at 16x24" in cli("--render-only", "--n-train", "1", *size)
