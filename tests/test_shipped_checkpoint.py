"""The pretrained tiny_p8 SAM shipped in the package: the file matches its provenance, loads strictly into the
architecture it names, beats the box-as-mask reference it was judged by; the export and the guard against a
damaged file; the pretraining domain gap."""
import json
import shutil

import numpy as np
import pytest
import torch

from tensoradapt.sam import build_msam, build_sam, get_sam_config
from tensoradapt.sam.weights import read_sam_checkpoint
from tensoradapt.train.pretrain import (
    PRETRAIN_VERSION,
    SHIPPED_CONFIG,
    PretrainConfig,
    PromptScenes,
    ShippedCheckpointError,
    export_shipped,
    palette_shift,
    pretrain_tiny_sam,
    pretrained_checkpoint,
    shipped_checkpoint,
    shipped_paths,
)
from tensoradapt.train.pretrain.shipped import shipped_matches_recipe

FAST = dict(n_scenes=4, n_heldout=2, batch_size=2, masks_per_image=2, eval_masks_per_scene=2)


def test_the_shipped_file_matches_its_provenance_and_recipe():
    weights, provenance = shipped_paths()
    assert shipped_checkpoint() == weights
    record = json.loads(provenance.read_text())
    assert weights.stat().st_size <= 5 * 2**20
    assert PretrainConfig.from_dict(record["pretrain_config"]) == SHIPPED_CONFIG
    assert shipped_matches_recipe() is None, "the pretraining recipe changed: regenerate the shipped checkpoint"
    assert record["recipe_version"] == PRETRAIN_VERSION
    for key in ("command", "code_revision", "seed", "steps", "source_sha256", "device"):
        assert record[key] not in (None, "", "unknown"), key
    assert f"--steps {SHIPPED_CONFIG.steps}" in record["command"]
    # judged by its own objective: clearly better than predicting the prompt box itself, in fp16 as shipped:
    # the paired 95 % interval of the gain excludes 0
    iou = record["heldout_iou"]["fp16_shipped"]
    assert iou["box_gain"] - iou["box_gain_ci95"] > 0 and iou["box_iou"] > iou["box_fill_iou"] + 0.02
    assert iou["n_masks"] >= 500
    assert abs(iou["box_iou"] - record["heldout_iou"]["fp32"]["box_iou"]) < 0.01


def test_the_shipped_file_loads_strictly_into_tiny_p8():
    state, _ = read_sam_checkpoint(shipped_checkpoint())
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    sam = build_sam("tiny_p8")
    sam.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    model = build_msam("tiny_p8", {"depth": 1}, checkpoint=str(shipped_checkpoint()), decomp="frozen")
    enc = model.image_encoder.state_dict()
    assert torch.equal(enc["patch_embed.proj.weight"], state["image_encoder.patch_embed.proj.weight"].float())
    assert pretrained_checkpoint("tiny_p8") == shipped_checkpoint()
    with pytest.raises(ValueError, match="no project-pretrained SAM for model 'vit_b'"):
        pretrained_checkpoint("vit_b")


def test_a_damaged_or_missing_shipped_file_is_refused(tmp_path):
    weights, provenance = shipped_paths()
    shutil.copy(weights, tmp_path / weights.name)
    shutil.copy(provenance, tmp_path / provenance.name)
    assert shipped_checkpoint(folder=tmp_path) == tmp_path / weights.name
    data = bytearray((tmp_path / weights.name).read_bytes())
    data[-1] ^= 1
    (tmp_path / weights.name).write_bytes(bytes(data))
    with pytest.raises(ShippedCheckpointError, match="does not match its provenance"):
        shipped_checkpoint(folder=tmp_path)
    (tmp_path / weights.name).unlink()
    with pytest.raises(ShippedCheckpointError, match="no shipped checkpoint for model 'tiny_p8'"):
        shipped_checkpoint(folder=tmp_path)


def test_export_writes_fp16_weights_and_a_provenance_that_vouches_for_them(tmp_path):
    pc = PretrainConfig(steps=2, **FAST)
    src = tmp_path / "run" / "tiny.pth"
    report = pretrain_tiny_sam(src, pc, progress=False)
    record = export_shipped(src, command="pretrain_sam.py --steps 2", folder=tmp_path / "assets", revision="abc")
    weights, provenance = shipped_paths("tiny", tmp_path / "assets")
    assert json.loads(provenance.read_text()) == record
    assert shipped_checkpoint("tiny", tmp_path / "assets") == weights
    assert record["source_sha256"] == report["sha256"] and record["code_revision"] == "abc"
    assert record["pretrain_config"] == pc.to_dict() and record["recipe_version"] == PRETRAIN_VERSION
    fp32 = torch.load(src, weights_only=True)
    half, _ = read_sam_checkpoint(weights)
    assert half.keys() == fp32.keys()
    for k, v in fp32.items():
        assert torch.equal(half[k], v.half() if v.is_floating_point() else v), k
    with pytest.raises(ShippedCheckpointError, match="no pretraining report"):
        export_shipped(weights, command="x", folder=tmp_path / "other")


def test_palette_shift_is_a_seeded_colour_change_within_its_ranges():
    img = torch.rand(3, 6, 8)
    a = palette_shift(img, np.random.default_rng(3))
    b = palette_shift(img, np.random.default_rng(3))
    c = palette_shift(img, np.random.default_rng(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == img.shape and a.min() >= 0 and a.max() <= 1
    rng = np.random.default_rng(3)  # the same draws by hand
    perm, gain, gamma = rng.permutation(3), rng.uniform(0.6, 1.4, size=(3, 1, 1)), rng.uniform(0.6, 1.6)
    want = (img[torch.from_numpy(perm)] * torch.from_numpy(gain).float()).clamp(0, 1) ** float(gamma)
    assert torch.allclose(a, want)


def test_the_domain_gap_changes_the_pretraining_images_only():
    cfg = get_sam_config("tiny")
    plain = PromptScenes(cfg, 2, stream="sam_train")
    shifted = PromptScenes(cfg, 2, stream="sam_train", domain_gap="palette")
    assert torch.equal(plain.instances, shifted.instances) and plain.masks == shifted.masks
    h, w = plain.h, plain.w
    assert not torch.allclose(plain.inputs[:, :, :h, :w], shifted.inputs[:, :, :h, :w], atol=0.05)
    assert torch.equal(shifted.inputs[:, :, h:], plain.inputs[:, :, h:])  # the padding stays zero
    with pytest.raises(ValueError, match="domain_gap must be one of"):
        PretrainConfig(domain_gap="sepia")


def test_objects_only_masks_leave_out_the_rooms_shell_and_nothing_else():
    from tensoradapt.data.synthetic import synthesize
    from tensoradapt.data.synthetic.classes import CLASSES
    from tensoradapt.train.pretrain import SHELL_CLASSES, shell_instances

    cfg = get_sam_config("tiny")
    every = PromptScenes(cfg, 3, stream="sam_train")
    objects = PromptScenes(cfg, 3, stream="sam_train", masks="objects")
    assert torch.equal(every.inputs, objects.inputs) and torch.equal(every.instances, objects.instances)
    shell_ids = [CLASSES.index(c) for c in SHELL_CLASSES]
    dropped_any = False
    for i in range(3):
        label = torch.from_numpy(synthesize(i, seed=0, stream="sam_train", height=every.h, width=every.w)["label"]
                                 .astype(np.int64))
        for k in every.masks[i]:
            cls = label[(every.instances[i] == k) & (label >= 0)]
            is_shell = cls.numel() > 0 and int(cls.mode().values) in shell_ids
            assert (k in objects.masks[i]) == (not is_shell), (i, k)
            dropped_any |= is_shell
        keep = [every.masks[i].index(k) for k in objects.masks[i]]
        assert torch.equal(objects.areas[i], every.areas[i][keep])
    assert dropped_any  # every room has walls and a floor
    wall, floor, bed = (CLASSES.index(c) for c in ("wall", "floor", "bed"))
    inst = torch.tensor([[1, 1, 2, 2], [3, 3, 3, 2]])
    lab = torch.tensor([[wall, -1, bed, bed], [floor, bed, bed, bed]])
    assert shell_instances(inst, lab) == {1}  # 1: wall (its unlabelled pixel aside); 3: mostly bed
    with pytest.raises(ValueError, match="masks must be one of"):
        PretrainConfig(masks="stuff")
    with pytest.raises(ValueError, match="masks must be"):
        PromptScenes(cfg, 1, masks="stuff")


def test_a_report_from_before_the_masks_option_still_names_its_config():
    from tensoradapt.train.pretrain.build import config_digest

    before_option = PretrainConfig(model="tiny_p8", steps=8000, n_scenes=1000)  # the first shipped recipe
    old = {k: v for k, v in before_option.to_dict().items() if k != "masks"}
    assert PretrainConfig.from_dict(old) == before_option
    palette = PretrainConfig(domain_gap="palette")
    assert config_digest(palette) != config_digest(palette.replace(masks="objects"))
    # the digest of a config at the option's default is what it was before the option existed (cached names hold)
    import hashlib

    before = json.dumps({"version": PRETRAIN_VERSION, **{k: v for k, v in palette.to_dict().items()
                                                        if k != "masks"}}, sort_keys=True)
    assert config_digest(palette) == hashlib.sha256(before.encode()).hexdigest()[:10]
