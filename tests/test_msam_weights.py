"""Official SAM weights into mSAM (tensoradapt.sam.weights): placement, resized position tables, errors."""
from __future__ import annotations

import pytest
import torch

from tensoradapt import TaskLinear
from tensoradapt.sam import SamCheckpointError, build_msam, build_sam, get_sam_config
from tensoradapt.sam._import import sam_build_module
from tensoradapt.sam.weights import expected_sam_shapes, fit_sam_state_dict

from msam_fixtures import SMALL, ckpt, sam  # noqa: F401 (fixtures)


def test_official_builder_checkpoint_lands_in_place(tmp_path):
    """A state dict from segment_anything's own `_build_sam` (image 1024, prompt dim 256) at small width."""
    torch.manual_seed(3)
    official = sam_build_module()._build_sam(
        encoder_embed_dim=64, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=[1],
    )
    with torch.no_grad():
        for name, p in official.named_parameters():
            if "rel_pos" in name or "pos_embed" in name:
                p.normal_()
    path = tmp_path / "official_small.pth"
    torch.save(official.state_dict(), path)
    cfg = get_sam_config("vit_b").replace(
        name="small", encoder_embed_dim=64, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=(1,)
    )
    model = build_msam(cfg, SMALL, checkpoint=path)
    assert model.msam_config.checkpoint == str(path.resolve())
    enc = model.image_encoder
    qkv = enc.blocks[0].attn.qkv
    assert isinstance(qkv, TaskLinear)
    assert torch.equal(qkv.base.weight, official.image_encoder.blocks[0].attn.qkv.weight)
    assert torch.equal(enc.pos_embed, official.image_encoder.pos_embed)
    assert torch.equal(enc.blocks[1].attn.rel_pos_h, official.image_encoder.blocks[1].attn.rel_pos_h)
    assert torch.equal(enc.neck[0].weight, official.image_encoder.neck[0].weight)
    for name, c in SMALL.items():
        dec_sd, ref_sd = model.decoders[name].state_dict(), official.mask_decoder.state_dict()
        assert dec_sd.keys() == ref_sd.keys()
        assert all(torch.equal(dec_sd[k], ref_sd[k]) for k in ref_sd)
        assert torch.equal(model.no_mask_embeds[name], official.prompt_encoder.no_mask_embed.weight.expand(c, -1))
    assert torch.equal(
        model.pe_layer.positional_encoding_gaussian_matrix,
        official.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix,
    )

    # Another image size: pos_embed and the global block's rel_pos are resized, the windowed one's kept.
    small = build_msam(cfg, SMALL, checkpoint=path, image_size=256)
    g = 256 // 16
    assert small.image_encoder.pos_embed.shape == (1, g, g, 64)
    assert small.image_encoder.blocks[1].attn.rel_pos_h.shape == (2 * g - 1, 32)
    assert torch.equal(small.image_encoder.blocks[0].attn.rel_pos_h, official.image_encoder.blocks[0].attn.rel_pos_h)
    with torch.no_grad():
        out = small(torch.rand(1, 3, 96, 128))
    assert out["a"].shape == (1, 3, 96, 128)


def test_image_size_interpolation_tiny(sam, ckpt):
    model = build_msam("tiny", SMALL, checkpoint=ckpt, image_size=64)
    assert model.config.image_size == 64 and model.config.grid_size == 4
    pos = model.image_encoder.pos_embed
    assert pos.shape == (1, 4, 4, 128)
    # bicubic resize of the 8x8 table (a smooth down-sampling, not a copy)
    assert not torch.equal(pos, sam.image_encoder.pos_embed[:, :4, :4])
    assert model.image_encoder.blocks[1].attn.rel_pos_h.shape == (7, 32)
    assert torch.equal(model.image_encoder.blocks[0].attn.rel_pos_w, sam.image_encoder.blocks[0].attn.rel_pos_w)
    with torch.no_grad():
        assert model(torch.rand(2, 3, 48, 64))["a"].shape == (2, 3, 48, 64)


def test_bad_checkpoints(sam, ckpt, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_msam("tiny", SMALL, checkpoint=tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    junk.write_text("not a checkpoint")
    with pytest.raises(SamCheckpointError, match="junk.pth"):
        build_msam("tiny", SMALL, checkpoint=junk)

    state = dict(sam.state_dict())
    no_pe = {k: v for k, v in state.items() if "pe_layer" not in k}
    torch.save(no_pe, tmp_path / "no_pe.pth")
    with pytest.raises(SamCheckpointError, match=r"no_pe\.pth[\s\S]*missing keys.*pe_layer\.positional_encoding_gaussian_matrix"):
        build_msam("tiny", SMALL, checkpoint=tmp_path / "no_pe.pth")
    with pytest.raises(SamCheckpointError, match=r"unexpected keys.*mask_decoder\.extra"):
        build_msam("tiny", SMALL, checkpoint={**state, "mask_decoder.extra": torch.zeros(1)})
    with pytest.raises(SamCheckpointError, match="not tensors"):
        build_msam("tiny", SMALL, checkpoint={**state, "prompt_encoder.note": "hello"})

    # another model size: a deeper, wider tiny variant
    other = build_sam(get_sam_config("tiny").replace(encoder_embed_dim=192, encoder_depth=6, encoder_num_heads=6))
    torch.save(other.state_dict(), tmp_path / "other.pth")
    with pytest.raises(SamCheckpointError) as err:
        build_msam("tiny", SMALL, checkpoint=tmp_path / "other.pth")
    msg = str(err.value)
    assert "other.pth" in msg and "embed dim 192, depth 6" in msg
    assert "unexpected keys (28): image_encoder.blocks.4." in msg
    assert "image_encoder.blocks.0.attn.qkv.weight: checkpoint (576, 192) vs model (384, 128)" in msg


def test_official_size_mismatch_is_named():
    """A vit_l state dict (shapes only, meta tensors) offered to vit_b names both sizes."""
    state = {k: torch.empty(s, device="meta") for k, s in expected_sam_shapes(get_sam_config("vit_l")).items()}
    with pytest.raises(SamCheckpointError, match=r"model_type 'vit_b'[\s\S]*looks like a vit_l checkpoint"):
        fit_sam_state_dict(state, get_sam_config("vit_b"), "sam_vit_l_0b3195.pth")
