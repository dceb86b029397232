"""Tiny SAM pretraining: the pieces against hand computations, and a few fixed steps write an official-format
state dict that loads like SAM's own, the same bytes every time."""
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from tensoradapt.sam import build_sam, get_sam_config
from tensoradapt.train.pretrain import (
    PretrainConfig,
    PromptScenes,
    dice_loss,
    evaluate_checkpoint,
    evaluate_prompted_iou,
    focal_loss,
    load_sam_checkpoint,
    mask_iou,
    pretrain_tiny_sam,
)
from tensoradapt.train.pretrain.objective import prompted_mask_loss
from tensoradapt.train.pretrain.prompts import box_masks, interior_points, jitter_boxes, mask_boxes, random_points
from tensoradapt.train.schedule import lr_factor
from tensoradapt.train.stats import t_interval

FAST = dict(n_scenes=4, n_heldout=2, batch_size=2, masks_per_image=2, eval_masks_per_scene=2)


def test_prompt_helpers_hand_computed():
    m = torch.zeros(2, 6, 8, dtype=torch.bool)
    m[0, 1:4, 2:7] = True          # rows 1..3, cols 2..6
    m[1, 5, 0] = True
    boxes = mask_boxes(m)
    assert boxes.tolist() == [[2.0, 1.0, 6.0, 3.0], [0.0, 5.0, 0.0, 5.0]]
    assert torch.equal(box_masks(boxes, 6, 8), m)      # both masks are their own boxes
    p = interior_points(m)
    assert p[0].tolist() == [4.0, 2.0] and p[1].tolist() == [0.0, 5.0]
    g = torch.Generator().manual_seed(0)
    inside, outside = random_points(m, True, g).long(), random_points(m, False, g).long()
    assert all(m[k, y, x] for k, (x, y) in enumerate(inside.tolist()))
    assert not any(m[k, y, x] for k, (x, y) in enumerate(outside.tolist()))
    jittered = jitter_boxes(boxes, g)
    assert (jittered >= 0).all() and ((jittered - boxes).abs() <= 4.0).all()
    a = torch.zeros(1, 4, 4, dtype=torch.bool)
    b = torch.zeros(1, 4, 4, dtype=torch.bool)
    a[0, :2] = True                 # 8 pixels
    b[0, 1:3] = True                # 8 pixels, 4 shared
    assert mask_iou(a, b).item() == pytest.approx(4 / 12)


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def test_focal_and_dice_match_a_direct_computation():
    logits = torch.tensor([[[0.0, 2.0], [-1.0, 3.0]]])     # (1, 2, 2): one mask
    target = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    alpha, gamma = 0.3, 2.0
    terms, inter, p_sum = [], 0.0, 0.0
    for z, t in zip(logits.flatten().tolist(), target.flatten().tolist()):
        p = _sigmoid(z)
        ce = -(t * math.log(p) + (1 - t) * math.log(1 - p))
        p_t = p if t else 1 - p
        a_t = alpha if t else 1 - alpha
        terms.append(a_t * (1 - p_t) ** gamma * ce)
        inter += p * t
        p_sum += p
    focal = sum(terms) / 4
    dice = 1 - (2 * inter + 1) / (p_sum + target.sum().item() + 1)
    assert focal_loss(logits, target, alpha=alpha, gamma=gamma).tolist() == pytest.approx([focal], rel=1e-6)
    assert dice_loss(logits, target).tolist() == pytest.approx([dice], rel=1e-6)
    # per mask: a (K, M, h, w) batch gives (K, M), each what it gives alone
    both = torch.stack([logits, -logits], 1)                # (1, 2, 2, 2)
    tt = target[:, None].expand_as(both)
    assert focal_loss(both, tt).shape == (1, 2)
    assert dice_loss(both, tt)[0, 1].item() == pytest.approx(dice_loss(-logits, target).item())


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
    report = pretrain_tiny_sam(out, progress=False, steps=3, **FAST)
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
    loaded = load_sam_checkpoint(out)
    assert torch.equal(loaded.mask_decoder.mask_tokens.weight, state["mask_decoder.mask_tokens.weight"])


def test_report_fields(tmp_path):
    out = tmp_path / "tiny.pth"
    pc = PretrainConfig(steps=4, seed=4, warmup_steps=1, **FAST)
    report = pretrain_tiny_sam(out, pc, progress=False)
    assert json.loads(out.with_suffix(".json").read_text()) == json.loads(json.dumps(report))
    assert report["pretrain_config"] == pc.to_dict() and PretrainConfig.from_dict(report["pretrain_config"]) == pc
    assert report["steps"] == 4 and report["seed"] == 4 and report["torch_threads"] == 1
    import hashlib

    assert report["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert set(report["heldout_iou"]) == {"pretrained", "random_init"}
    for v in report["heldout_iou"].values():
        assert 0.0 <= v["box_iou"] <= 1.0 and 0.0 <= v["point_iou"] <= 1.0 and v["n_masks"] > 0
        assert 0.0 < v["box_fill_iou"] <= 1.0                # the "box itself" reference
    hist = report["history"]
    assert [h["step"] for h in hist] == [1, 4] and math.isfinite(report["final_loss"])
    assert all(h["threads"] == 1 for h in hist)
    # warm-up then cosine over exactly `steps` (train/schedule.py): the lr each logged step used
    for h in hist:
        assert h["lr"] == pytest.approx(pc.lr * lr_factor(h["step"] - 1, 4, 1, "cosine", pc.min_lr_ratio))
    assert pc.min_lr_ratio * pc.lr < hist[-1]["lr"] < pc.lr            # decaying, not yet at the floor


def test_same_config_and_seed_give_bit_identical_checkpoints(tmp_path):
    torch.set_num_threads(2)       # the caller's setting: pretraining runs one thread, then restores it
    try:
        rng = torch.get_rng_state()
        a = pretrain_tiny_sam(tmp_path / "a.pth", progress=False, steps=3, **FAST)
        assert torch.get_num_threads() == 2 and torch.equal(torch.get_rng_state(), rng)
        assert all(h["threads"] == 1 for h in a["history"])
    finally:
        torch.set_num_threads(1)
    b = pretrain_tiny_sam(tmp_path / "b.pth", progress=False, steps=3, **FAST)
    assert (tmp_path / "a.pth").read_bytes() == (tmp_path / "b.pth").read_bytes()
    assert a["sha256"] == b["sha256"] and a["history"] == b["history"] and a["heldout_iou"] == b["heldout_iou"]
    c = pretrain_tiny_sam(tmp_path / "c.pth", progress=False, steps=3, seed=1, **FAST)
    assert c["sha256"] != a["sha256"]


@pytest.fixture
def one_thread():
    """One intra-op thread: on a busy shared 2-core machine two threads are several times slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_training_reduces_the_loss(one_thread):
    cfg = get_sam_config("tiny")
    data = PromptScenes(cfg, 6, seed=0)
    pc = PretrainConfig(batch_size=3, masks_per_image=3)
    torch.manual_seed(0)
    sam = build_sam(cfg).train()

    def fixed_batch_loss():
        with torch.no_grad():
            return float(prompted_mask_loss(sam, data, pc, torch.Generator().manual_seed(123))["loss"])

    before = fixed_batch_loss()
    opt = torch.optim.AdamW(sam.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        loss = prompted_mask_loss(sam, data, pc, g)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = fixed_batch_loss()
    assert after < 0.85 * before, (before, after)


def test_the_report_names_the_code_revision_the_run_started_on(tmp_path, monkeypatch):
    from tensoradapt.train.pretrain import loop

    tree = {"rev": "abc123"}
    monkeypatch.setattr(loop, "code_revision", lambda: tree["rev"])
    train = loop._train

    def commit_meanwhile(*args, **kwargs):  # the work tree moves on while the run trains
        tree["rev"] = "def456+dirty"
        return train(*args, **kwargs)

    monkeypatch.setattr(loop, "_train", commit_meanwhile)
    report = pretrain_tiny_sam(tmp_path / "tiny.pth", PretrainConfig(steps=1, warmup_steps=1, **FAST), progress=False)
    assert report["code_revision"] == "abc123"


def test_evaluating_a_finished_checkpoint_reproduces_its_report(tmp_path, capsys):
    pc = PretrainConfig(steps=2, seed=1, warmup_steps=1, masks="objects", **FAST)
    out = tmp_path / "tiny.pth"
    report = pretrain_tiny_sam(out, pc, progress=False)
    # the same held-out scenes (stream, seed, mask set) and the same weights: the same numbers, without training
    assert evaluate_checkpoint(str(out), pc) == report["heldout_iou"]["pretrained"]
    # and the CLI: the config recorded beside the checkpoint picks the held-out scenes, a flag given replaces it
    spec = importlib.util.spec_from_file_location(
        "pretrain_sam_cli", Path(__file__).parents[1] / "experiments" / "pretrain_sam.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    assert cli.main(["--evaluate", str(out)]) == report["heldout_iou"]["pretrained"]
    assert "box prompt - box itself" in capsys.readouterr().out
    three = cli.main(["--evaluate", str(out), "--n-heldout", "3"])
    assert three["n_scenes"] == 3 and three == evaluate_checkpoint(str(out), pc.replace(n_heldout=3))
    assert cli.main(["--evaluate", str(out), "--n-held", "3"]) == three  # argparse's abbreviation counts as given
    for bad, message in ((["--evaluate", str(tmp_path / "missing.pth")], "--evaluate: no checkpoint at"),
                         (["--evaluate", str(out), "--ship"], "cannot be combined with --ship"),
                         (["--evaluate", str(out), "--model", "tiny_p8"], "does not load into a 'tiny_p8' SAM (--model)")):
        with pytest.raises(SystemExit):
            cli.main(bad)
        assert message in capsys.readouterr().err, bad



def test_evaluation_is_deterministic():
    cfg = get_sam_config("tiny")
    data = PromptScenes(cfg, 2, seed=3, stream="sam_heldout")
    torch.manual_seed(0)
    sam = build_sam("tiny")
    a = evaluate_prompted_iou(sam, data, masks_per_scene=3)
    b = evaluate_prompted_iou(sam, data, masks_per_scene=3)
    assert a == b and a["n_masks"] == 6
    assert 0.3 < a["box_fill_iou"] <= 1.0
    # the paired gain over the box itself: a mean per scene, then the interval over scenes (not over masks,
    # which share their scene's image); scene 0 alone gives the first scene's gain
    first = evaluate_prompted_iou(sam, PromptScenes(cfg, 1, seed=3, stream="sam_heldout"), masks_per_scene=3)
    gains = [first["box_gain"], 2 * a["box_gain"] - first["box_gain"]]
    assert a["n_scenes"] == 2 and a["box_gain_ci95"] == pytest.approx(t_interval(gains))
    assert first["box_gain"] == pytest.approx(first["box_iou"] - first["box_fill_iou"], abs=1e-6)


def test_config_and_cli_errors(tmp_path, capsys):
    for bad, name in [(dict(steps=0), "steps"), (dict(batch_size=0), "batch_size"), (dict(steps=2.5), "steps"),
                      (dict(lr=0), "lr"), (dict(seed=-1), "seed"), (dict(min_lr_ratio=2), "min_lr_ratio")]:
        with pytest.raises(ValueError, match=name):
            PretrainConfig(**bad)
    with pytest.raises(ValueError, match="model_type"):
        PretrainConfig(model="vit_q")
    with pytest.raises(ValueError, match="budget_s"):
        PretrainConfig.from_dict({**PretrainConfig().to_dict(), "budget_s": 180.0})  # an old report's config
    spec = importlib.util.spec_from_file_location(
        "pretrain_sam_cli", Path(__file__).parents[1] / "experiments" / "pretrain_sam.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    with pytest.raises(SystemExit):
        cli.main(["--steps", "0", "--no-progress"])
    assert "steps must be an integer >= 1" in capsys.readouterr().err
    report = cli.main(["--out", str(tmp_path / "c.pth"), "--steps", "1", "--n-scenes", "2", "--n-heldout", "1",
                       "--batch-size", "1", "--no-progress"])
    assert report["steps"] == 1 and (tmp_path / "c.json").is_file()
