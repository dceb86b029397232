"""save_msam / load_msam: bit-exact round trips, and every way a saved folder can fail to fit is refused."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from tensoradapt import merge_adapters
from tensoradapt._utils import StateMismatchError, frozen_fingerprint, trainable_state_dict
from tensoradapt.sam import DECOMPS, MultiTaskSAM, build_msam, build_sam, load_msam, save_msam
from tensoradapt.sam.serialization import MSAM_CONFIG, MSAM_FORMAT, MSAM_WEIGHTS

from msam_fixtures import SMALL, TASKS, ckpt, randomise_deltas, sam  # noqa: F401 (fixtures)

X = torch.rand(2, 3, 96, 128, generator=torch.Generator().manual_seed(0))


def _trained(ckpt, decomp: str = "tucker", seed: int = 7, **kw) -> MultiTaskSAM:
    """A tiny mSAM whose every trainable tensor differs from its initial value (as after training)."""
    model = build_msam("tiny", SMALL, checkpoint=ckpt, decomp=decomp, **kw)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


def _assert_same_model(a: MultiTaskSAM, b: MultiTaskSAM) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa), [k for k in sa if not torch.equal(sa[k], sb[k])][:4]
    assert [n for n, p in a.named_parameters() if p.requires_grad] == [
        n for n, p in b.named_parameters() if p.requires_grad
    ]
    with torch.no_grad():
        oa, ob = a.eval()(X), b.eval()(X)
    assert all(torch.equal(oa[k], ob[k]) for k in oa)


@pytest.mark.parametrize("decomp", DECOMPS)
def test_round_trip_is_bit_exact(ckpt, tmp_path, decomp):
    model = _trained(ckpt, decomp)
    save_msam(model, tmp_path / "run")
    saved = load_file(str(tmp_path / "run" / MSAM_WEIGHTS))
    # exactly the project's trainable state: requires_grad parameters + persistent buffers (the image PE)
    assert saved.keys() == trainable_state_dict(model).keys()
    assert "pe_layer.positional_encoding_gaussian_matrix" in saved
    meta = json.loads((tmp_path / "run" / MSAM_CONFIG).read_text())
    assert meta["format"] == MSAM_FORMAT and meta["saved"] == "trainable"
    assert meta["frozen_fingerprint"] == frozen_fingerprint(model)  # one fingerprint format, the engine's too
    loaded = load_msam(tmp_path / "run")
    assert loaded.msam_config == model.msam_config
    _assert_same_model(model, loaded)


def test_round_trip_of_a_trained_tucker_model(ckpt, tmp_path):
    """After real optimiser steps (all tasks) the loaded model predicts exactly what the saved one did."""
    torch.manual_seed(7)
    model = build_msam("tiny", TASKS, checkpoint=ckpt, decomp="tucker", qkv="qv").train()
    randomise_deltas(model, std=0.05)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        sum(v.square().mean() for v in model(X).values()).backward()
        opt.step()
        opt.zero_grad()
    save_msam(model, tmp_path / "run")
    _assert_same_model(model, load_msam(tmp_path / "run"))


def test_round_trip_with_deltas_in_every_linear(ckpt, tmp_path):
    model = _trained(ckpt, "tucker", targets="qkv,proj,mlp")
    save_msam(model, tmp_path / "run")
    saved = load_file(str(tmp_path / "run" / MSAM_WEIGHTS))
    assert any(".mlp.lin2.delta." in k for k in saved) and any(".attn.proj.delta." in k for k in saved)
    loaded = load_msam(tmp_path / "run")
    assert loaded.msam_config.targets == ("qkv", "proj", "mlp")
    _assert_same_model(model, loaded)


def test_round_trip_with_trained_encoder_modules(ckpt, tmp_path):
    """The trained patch embedding is saved and restored (not re-read from the base checkpoint)."""
    model = _trained(ckpt, "tucker", train_modules="patch_embed")
    save_msam(model, tmp_path / "run")
    saved = load_file(str(tmp_path / "run" / MSAM_WEIGHTS))
    assert "image_encoder.patch_embed.proj.weight" in saved
    loaded = load_msam(tmp_path / "run")
    assert loaded.msam_config.train_modules == ("patch_embed",)
    base = build_msam("tiny", SMALL, checkpoint=ckpt).image_encoder.patch_embed.proj.weight
    assert not torch.equal(loaded.image_encoder.patch_embed.proj.weight, base)
    _assert_same_model(model, loaded)


def test_include_frozen_needs_no_base_checkpoint(tmp_path):
    torch.manual_seed(8)
    model = build_msam("tiny", SMALL, decomp="lora", qkv="qv")
    randomise_deltas(model)
    save_msam(model, tmp_path / "m", include_frozen=True)
    _assert_same_model(model, load_msam(tmp_path / "m"))
    # trainable-only without a base checkpoint cannot restore random frozen weights: a clear error
    save_msam(model, tmp_path / "t")
    with pytest.raises(ValueError, match=r"<random init>.*frozen weights differ"):
        load_msam(tmp_path / "t")
    with pytest.raises(FileNotFoundError, match="msam_config.json"):
        load_msam(tmp_path / "missing")


def test_other_base_weights_are_refused_naming_the_tensor(sam, ckpt, tmp_path):
    model = _trained(ckpt)
    save_msam(model, tmp_path / "run")
    key = "image_encoder.blocks.2.mlp.lin1.weight"
    state = {k: v.clone() for k, v in sam.state_dict().items()}
    state[key] += 1e-3
    torch.save(state, tmp_path / "fine_tuned.pth")
    with pytest.raises(ValueError, match=rf"fine_tuned\.pth.*differ in \['{key}'\]"):
        load_msam(tmp_path / "run", checkpoint=tmp_path / "fine_tuned.pth")
    with pytest.raises(ValueError, match=r"in-memory state dict.*differ in \['decoders\.a\.iou"):
        load_msam(tmp_path / "run", checkpoint={
            **sam.state_dict(),
            "mask_decoder.iou_prediction_head.layers.0.weight": torch.zeros(64, 64),
        })
    torch.save(build_sam("tiny").state_dict(), tmp_path / "random.pth")
    with pytest.raises(ValueError, match=r"random\.pth"):
        load_msam(tmp_path / "run", checkpoint=tmp_path / "random.pth")
    # the same weights elsewhere (or in memory) are accepted: the recorded path is only the default
    shutil.copy(ckpt, tmp_path / "moved.pth")
    moved = load_msam(tmp_path / "run", checkpoint=tmp_path / "moved.pth")
    assert moved.msam_config.checkpoint == str((tmp_path / "moved.pth").resolve())
    _assert_same_model(model, moved)
    _assert_same_model(model, load_msam(tmp_path / "run", checkpoint=sam.state_dict()))
    with pytest.raises(FileNotFoundError, match=r"gone\.pth.*checkpoint=PATH"):
        load_msam(tmp_path / "run", checkpoint=tmp_path / "gone.pth")


def test_truncated_or_swapped_weights_are_refused(ckpt, tmp_path):
    save_msam(_trained(ckpt, seed=1), tmp_path / "run")
    save_msam(_trained(ckpt, seed=2), tmp_path / "other")
    weights = tmp_path / "run" / MSAM_WEIGHTS
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"msam\.safetensors.*truncated"):
        load_msam(tmp_path / "run")
    # the same keys and shapes, but another save's values: only the recorded sha256 tells them apart
    shutil.copy(tmp_path / "other" / MSAM_WEIGHTS, weights)
    with pytest.raises(ValueError, match="another save"):
        load_msam(tmp_path / "run")


def test_weights_that_do_not_fit_the_config_are_named(ckpt, tmp_path):
    """A config edited after saving (or another version's trainable set): keys and shapes are named."""
    save_msam(_trained(ckpt), tmp_path / "run")
    cfg_path = tmp_path / "run" / MSAM_CONFIG
    meta = json.loads(cfg_path.read_text())
    meta["msam_config"]["ranks"] = [4, 4, 4]
    cfg_path.write_text(json.dumps(meta))
    with pytest.raises(StateMismatchError, match=r"qkv\.delta\.core: \(4, 8, 8\) in \S*msam\.safetensors vs \(4, 4, 4\)"):
        load_msam(tmp_path / "run")
    meta["msam_config"].update(decomp="cp", ranks=8)
    cfg_path.write_text(json.dumps(meta))
    with pytest.raises(StateMismatchError, match=r"unexpected keys \['image_encoder\.blocks\.0\.attn\.qkv\.delta\.core'"):
        load_msam(tmp_path / "run")


def test_an_old_format_folder_is_refused_clearly(ckpt, tmp_path):
    """What format 1 wrote: requires_grad parameters only, and one (count, sum, sum of squares) fingerprint."""
    model = _trained(ckpt)
    save_msam(model, tmp_path / "run")
    cfg_path = tmp_path / "run" / MSAM_CONFIG
    meta = json.loads(cfg_path.read_text())
    old = {
        "format": "tensoradapt.msam/1", "saved": "trainable", "trainable_keys": [],
        "frozen_fingerprint": [1.0, 2.0, 3.0], "msam_config": meta["msam_config"],
    }
    cfg_path.write_text(json.dumps(old))
    with pytest.raises(ValueError, match=r"older mSAM format 'tensoradapt\.msam/1'.*save it again"):
        load_msam(tmp_path / "run")
    cfg_path.write_text(json.dumps({**meta, "format": "something/9"}))
    with pytest.raises(ValueError, match=r"not an mSAM config \(format 'something/9'"):
        load_msam(tmp_path / "run")
    cfg_path.write_text("{ not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_msam(tmp_path / "run")


def test_a_merged_model_is_not_saved(ckpt, tmp_path):
    """Its frozen qkv weights hold a folded delta: saving it would make every load fail the fingerprint."""
    model = _trained(ckpt)
    with torch.no_grad():
        merge_adapters(model, 1)
    with pytest.raises(RuntimeError, match="unmerge_adapters"):
        save_msam(model, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    with pytest.raises(TypeError, match="MultiTaskSAM"):
        save_msam(torch.nn.Linear(2, 2), tmp_path / "run")
