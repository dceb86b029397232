"""mSAM at the official sizes: parameter arithmetic on the meta device, and an official vit_b checkpoint."""
from __future__ import annotations

import pytest
import torch

from tensoradapt import trainable_parameters_report
from tensoradapt.sam import build_msam, parameter_breakdown
from tensoradapt.sam._import import sam_build_module

TASKS = {"semantic": 13, "depth": 1, "normal": 3}



def _meta(model_type, **kw):
    with torch.device("meta"):
        return build_msam(model_type, TASKS, **kw)


def test_vit_l_tucker_matches_the_paper():
    """24 blocks x (32*32*4 + 1024*32 + 3072*32 + 3*4) = 3,244,320 delta parameters on q, k, v."""
    model = _meta("vit_l", ranks=(4, 32, 32), qkv="qkv")
    b = parameter_breakdown(model)
    assert b["delta"] == 24 * (32 * 32 * 4 + 1024 * 32 + 3072 * 32 + 3 * 4) == 3_244_320
    report = trainable_parameters_report(model)
    assert "delta params: 3,244,320" in report


@pytest.mark.parametrize("model_type,depth,dim", [("vit_b", 12, 768), ("vit_l", 24, 1024), ("vit_h", 32, 1280)])
def test_official_sizes_on_meta(model_type, depth, dim):
    model = _meta(model_type)
    assert model.msam_config.ranks == (4, 32, 32)
    b = parameter_breakdown(model)
    assert b["delta"] == depth * (32 * 32 * 4 + 3 * dim * 32 + dim * 32 + 3 * 4)
    assert b["encoder_norms_trainable"] == depth * 4 * dim + 2 * 2 * 256
    assert b["no_mask_embeds"] == 17 * 256
    assert b["trainable"] == b["delta"] + b["encoder_norms_trainable"] + b["decoders_trainable"] + b["no_mask_embeds"]
    assert next(model.parameters()).device.type == "meta"


def test_official_vit_b_checkpoint_loads(tmp_path):
    """segment_anything's own vit_b builder -> torch.save -> build_msam("vit_b", checkpoint=...)."""
    torch.manual_seed(0)
    official = sam_build_module().build_sam_vit_b()
    path = tmp_path / "sam_vit_b_random.pth"
    torch.save(official.state_dict(), path)
    ref_qkv = official.image_encoder.blocks[11].attn.qkv.weight.clone()
    ref_dec = official.mask_decoder.output_upscaling[0].weight.clone()
    ref_pe = official.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.clone()
    del official
    model = build_msam("vit_b", {"semantic": 13, "depth": 1}, checkpoint=path)
    assert torch.equal(model.image_encoder.blocks[11].attn.qkv.base.weight, ref_qkv)
    assert torch.equal(model.decoders["depth"].output_upscaling[0].weight, ref_dec)
    assert torch.equal(model.pe_layer.positional_encoding_gaussian_matrix, ref_pe)
    assert model.image_encoder.pos_embed.shape == (1, 64, 64, 768)
    del model
    # at a CPU-friendly input size: position tables interpolated, one forward
    small = build_msam("vit_b", {"semantic": 13, "depth": 1}, checkpoint=path, image_size=256).eval()
    assert small.image_encoder.pos_embed.shape == (1, 16, 16, 768)
    assert small.image_encoder.blocks[2].attn.rel_pos_h.shape == (31, 64)   # global block: resized
    assert small.image_encoder.blocks[0].attn.rel_pos_h.shape == (27, 64)   # windowed (14): kept
    with torch.no_grad():
        out = small(torch.rand(1, 3, 96, 128))
    assert out["semantic"].shape == (1, 13, 96, 128) and out["depth"].shape == (1, 1, 96, 128)
