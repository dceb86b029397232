"""Tiny SAM pretraining: a few steps write an official-format state dict that loads like SAM's own."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from tensoradapt.sam.config import build_sam, get_sam_config
from tensoradapt.sam.pretrained import (
    PretrainConfig,
    PromptScenes,
    _boxes,
    _interior_points,
    _mask_iou,
    dice_loss,
    ensure_tiny_sam_checkpoint,
    evaluate_prompted_iou,
    focal_loss,
    load_sam_checkpoint,
    pretrain_tiny_sam,
)

FAST = dict(n_scenes=4, n_heldout=2, batch_size=2, masks_per_image=2, eval_masks_per_scene=2)


def test_prompt_helpers_hand_computed():
    m = torch.zeros(2, 6, 8, dtype=torch.bool)
    m[0, 1:4, 2:7] = True          # rows 1..3, cols 2..6
    m[1, 5, 0] = True
    assert _boxes(m).tolist() == [[2.0, 1.0, 6.0, 3.0], [0.0, 5.0, 0.0, 5.0]]
    p = _interior_points(m)
    assert p[0].tolist() == [4.0, 2.0] and p[1].tolist() == [0.0, 5.0]
    a = torch.zeros(1, 4, 4, dtype=torch.bool)
    b = torch.zeros(1, 4, 4, dtype=torch.bool)
    a[0, :2] = True                 # 8 pixels
    b[0, 1:3] = True                # 8 pixels, 4 shared
    assert _mask_iou(a, b).item() == pytest.approx(4 / 12)


def test_losses_behave():
    target = torch.zeros(1, 1, 8, 8)
    target[..., 2:6, 2:6] = 1
    good = (target * 2 - 1) * 10
    bad = -good
    assert focal_loss(good, target).item() < 1e-6 < focal_loss(bad, target).item()
    assert dice_loss(good, target).item() < 0.01 and dice_loss(bad, target).item() > 0.9


def test_scenes_are_sam_preprocessed():
    cfg = get_sam_config("tiny")
    data = PromptScenes(cfg, 2, seed=0, stream="sam_heldout")
    assert (data.h, data.w) == (96, 128)                  # NYUv2's 3:4 with the long side at 128
    assert data.inputs.shape == (2, 3, 128, 128)
    assert torch.all(data.inputs[:, :, 96:] == 0)         # padded bottom-right after normalisation
    # the normalisation is SAM's own (pixel mean / std on 0-255)
    sam = build_sam("tiny")
    from tensoradapt.data.synthetic import synthesize

    img = torch.from_numpy(synthesize(1, stream="sam_heldout", height=96, width=128)["image"]).permute(2, 0, 1)
    torch.testing.assert_close(data.inputs[1], sam.preprocess(img * 255.0))
    assert all(len(ids) > 0 for ids in data.masks)


def test_a_few_steps_write_a_loadable_official_state_dict(tmp_path):
    out = tmp_path / "ckpt" / "tiny.pth"
    report = pretrain_tiny_sam(out, progress=False, max_steps=3, **FAST)
    assert report["steps"] == 3
    assert out.is_file() and not list(out.parent.glob(".*tmp*"))  # atomic: no temporary left behind
    state = torch.load(out, map_location="cpu", weights_only=True)
    ref = build_sam("tiny").state_dict()
    assert list(state) == list(ref)
    assert {k.split(".")[0] for k in state} == {"image_encoder", "prompt_encoder", "mask_decoder"}
    assert all(state[k].shape == v.shape for k, v in ref.items())
    sam = build_sam("tiny")
    sam.load_state_dict(state, strict=True)                 # exactly like sam_vit_b_01ec64.pth
    # the weights were trained: they differ from a fresh init with the same seed
    torch.manual_seed(0)
    fresh = build_sam("tiny").state_dict()
    changed = [k for k in state if not torch.equal(state[k], fresh[k])]
    assert any(k.startswith("image_encoder.") for k in changed)
    assert any(k.startswith("mask_decoder.") for k in changed)
    # the image PE buffer is saved too (not loading it would leave a silently random PE)
    assert "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix" in state
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["steps"] == 3 and set(meta["heldout_iou"]) == {"pretrained", "random_init"}
    for v in meta["heldout_iou"].values():
        assert 0.0 <= v["box_iou"] <= 1.0 and 0.0 <= v["point_iou"] <= 1.0 and v["n_masks"] > 0
    loaded = load_sam_checkpoint(out)
    assert torch.equal(loaded.mask_decoder.mask_tokens.weight, state["mask_decoder.mask_tokens.weight"])


@pytest.fixture
def one_thread():
    """One intra-op thread: on a busy shared 2-core machine two threads are several times slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_training_reduces_the_loss(one_thread):
    from tensoradapt.sam.pretrained import _train_step

    cfg = get_sam_config("tiny")
    data = PromptScenes(cfg, 6, seed=0)
    pc = PretrainConfig(batch_size=3, masks_per_image=3)
    torch.manual_seed(0)
    sam = build_sam(cfg).train()

    def fixed_batch_loss():
        with torch.no_grad():
            return float(_train_step(sam, data, pc, torch.Generator().manual_seed(123))["loss"])

    before = fixed_batch_loss()
    opt = torch.optim.AdamW(sam.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        loss = _train_step(sam, data, pc, g)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = fixed_batch_loss()
    assert after < 0.85 * before, (before, after)


def test_evaluation_is_deterministic():
    cfg = get_sam_config("tiny")
    data = PromptScenes(cfg, 2, seed=3, stream="sam_heldout")
    torch.manual_seed(0)
    sam = build_sam("tiny")
    a = evaluate_prompted_iou(sam, data, masks_per_scene=3)
    b = evaluate_prompted_iou(sam, data, masks_per_scene=3)
    assert a == b and a["n_masks"] == 6
    assert 0.3 < a["box_fill_iou"] <= 1.0


def test_ensure_finds_or_builds(tmp_path, monkeypatch):
    monkeypatch.setenv("TENSORADAPT_CACHE", str(tmp_path / "cache"))
    import tensoradapt.sam.pretrained as P

    calls = []
    real = P.pretrain_tiny_sam

    def small(path, config, progress=True):
        calls.append(config.budget_s)
        report = real(path, config, progress=False, max_steps=1, **FAST)
        meta = path.with_suffix(".json")
        meta.write_text(json.dumps({**json.loads(meta.read_text()), "steps": P.MIN_REUSE_STEPS}))
        return report

    monkeypatch.setattr(P, "pretrain_tiny_sam", small)
    path = ensure_tiny_sam_checkpoint(budget_s=30, progress=False)
    assert path.is_file() and str(path).startswith(str(tmp_path / "cache"))
    assert calls == [30]
    stamp = path.stat().st_mtime_ns
    assert ensure_tiny_sam_checkpoint(progress=False) == path     # found: not rebuilt
    assert calls == [30] and path.stat().st_mtime_ns == stamp
    path.write_bytes(b"not a checkpoint")                          # corrupt: rebuilt
    ensure_tiny_sam_checkpoint(progress=False)
    assert len(calls) == 2
    torch.load(path, weights_only=True)
    meta = path.with_suffix(".json")                               # under-trained: rebuilt
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "steps": 0}))
    ensure_tiny_sam_checkpoint(progress=False)
    assert len(calls) == 3
    meta.unlink()                                                  # no report (a user's file): trusted
    ensure_tiny_sam_checkpoint(progress=False)
    assert len(calls) == 3


def test_min_steps_outlast_a_too_small_budget(tmp_path):
    # a budget already spent by the set-up (as on a busy machine) still trains min_steps steps
    report = pretrain_tiny_sam(tmp_path / "m.pth", progress=False, budget_s=0.01, min_steps=4, **FAST)
    assert report["steps"] == 4
    assert report["history"][0]["lr"] > 0


def test_config_and_cli_errors(tmp_path):
    with pytest.raises(ValueError, match="budget_s"):
        PretrainConfig(budget_s=0)
    with pytest.raises(ValueError, match="batch_size"):
        PretrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="model_type"):
        PretrainConfig(model="vit_q")
    spec = importlib.util.spec_from_file_location(
        "pretrain_sam_cli", Path(__file__).parents[1] / "experiments" / "pretrain_sam.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    report = cli.main(["--out", str(tmp_path / "c.pth"), "--max-steps", "1", "--n-scenes", "2", "--n-heldout", "1",
                       "--batch-size", "1", "--no-progress"])
    assert report["steps"] == 1 and (tmp_path / "c.json").is_file()


def test_thread_tuner_keeps_the_faster_setting_and_restores():
    import time

    from tensoradapt.sam.pretrained import _ThreadTuner

    original = torch.get_num_threads()
    tuner = _ThreadTuner()
    if len(tuner.candidates) == 1:
        pytest.skip("this process runs one intra-op thread: nothing to choose")
    calls = []

    def slow_when_threaded():
        calls.append(torch.get_num_threads())
        time.sleep(0.01 if torch.get_num_threads() > 1 else 0.0)

    assert tuner.tune(slow_when_threaded) == 1 and torch.get_num_threads() == 1
    assert len(calls) == 6  # warm-up + 2 timed calls per candidate
    assert tuner.tune(lambda: time.sleep(0.01 if torch.get_num_threads() == 1 else 0.0)) == original
    tuner.restore()
    assert torch.get_num_threads() == original
    stop_after = iter(range(100))
    tuner.tune(lambda: None, should_stop=lambda: next(stop_after) >= 2)  # stops early: keeps the default
    tuner.restore()
