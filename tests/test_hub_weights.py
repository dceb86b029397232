"""SAM weights in transformers' Hub format (config.json + model.safetensors) -> official layout -> mSAM.

A random tiny `SamModel` with the dimensions of mSAM's "tiny" config is saved with `save_pretrained`; the
official `segment_anything` modules and mSAM built from the converted weights must compute what it computes.
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from torch import nn

pytest.importorskip("transformers")

from tensoradapt.interop import read_hub_sam, sam_config_from_hub  # noqa: E402
from tensoradapt.interop.hub_sam import official_sam_state_dict  # noqa: E402
from tensoradapt.sam import SamCheckpointError, build_msam, build_sam, get_sam_config  # noqa: E402
from tiny_hosts import randomize_host_  # noqa: E402

#: transformers' SamConfig with the dimensions of SAM_CONFIGS["tiny"]
TINY = dict(
    vision_config=dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, global_attn_indexes=[1, 3],
                       image_size=128, patch_size=16, window_size=4, output_channels=64, num_pos_feats=32),
    prompt_encoder_config=dict(hidden_size=64, image_size=128, patch_size=16),
    mask_decoder_config=dict(hidden_size=64, mlp_dim=256, num_attention_heads=4, iou_head_hidden_dim=64),
)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """(folder, SamModel) of a saved random tiny SamModel."""
    from transformers import SamConfig, SamModel

    model = randomize_host_(SamModel(SamConfig(**TINY)), seed=3)
    folder = tmp_path_factory.mktemp("sam-hub")
    model.save_pretrained(folder)
    return folder, model


@pytest.fixture(scope="module")
def converted(hub):
    return read_hub_sam(hub[0])


def images(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 128, 128, generator=torch.Generator().manual_seed(0))


def match_decoder_eps_(decoder: nn.Module) -> None:
    """transformers' two-way blocks use LayerNorm eps 1e-6 where the official ones use torch's 1e-5."""
    for name, m in decoder.named_modules():
        if isinstance(m, nn.LayerNorm) and ".layers." in name and ".norm" in name:
            m.eps = 1e-6


def test_folder_reads_as_the_official_layout_and_config(hub, converted):
    folder, model = hub
    state, config = converted
    assert config == get_sam_config("tiny") and config.name == "tiny"
    sam = build_sam(config)
    assert set(state) == set(sam.state_dict())
    sam.load_state_dict(state, strict=True)
    hf = model.state_dict()
    # the renames that are not one-to-one by name: MLP layer indices, Sequential indices, the PE matrix
    pairs = {
        "mask_decoder.iou_prediction_head.layers.0.weight": "mask_decoder.iou_prediction_head.proj_in.weight",
        "mask_decoder.iou_prediction_head.layers.1.weight": "mask_decoder.iou_prediction_head.layers.0.weight",
        "mask_decoder.iou_prediction_head.layers.2.weight": "mask_decoder.iou_prediction_head.proj_out.weight",
        "mask_decoder.output_hypernetworks_mlps.3.layers.2.bias":
            "mask_decoder.output_hypernetworks_mlps.3.proj_out.bias",
        "mask_decoder.output_upscaling.3.weight": "mask_decoder.upscale_conv2.weight",
        "image_encoder.neck.3.weight": "vision_encoder.neck.layer_norm2.weight",
        "prompt_encoder.mask_downscaling.6.weight": "prompt_encoder.mask_embed.conv3.weight",
        "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": "shared_image_embedding.positional_embedding",
        "image_encoder.blocks.3.attn.rel_pos_h": "vision_encoder.layers.3.attn.rel_pos_h",
    }
    for official, transformers_key in pairs.items():
        assert torch.equal(state[official], hf[transformers_key]), official


def test_official_sam_matches_transformers_with_point_and_mask_prompts(hub, converted):
    _, model = hub
    state, config = converted
    sam = build_sam(config)
    sam.load_state_dict(state)
    match_decoder_eps_(sam.mask_decoder)
    x = images()
    g = torch.Generator().manual_seed(1)
    points, labels = torch.rand(2, 1, 3, 2, generator=g) * 128, torch.tensor([[[1, 0, 1]], [[0, 1, 1]]])
    mask_in = torch.randn(2, 1, 32, 32, generator=g)
    with torch.no_grad():
        emb = sam.image_encoder(x)
        out = model(pixel_values=x, input_points=points, input_labels=labels, input_masks=mask_in)
        torch.testing.assert_close(emb, model.vision_encoder(x).last_hidden_state, atol=2e-5, rtol=1e-5)
        for i in range(2):  # the official decoder takes one image per call
            sparse, dense = sam.prompt_encoder(points=(points[i], labels[i]), boxes=None, masks=mask_in[i:i + 1])
            m, iou = sam.mask_decoder(emb[i:i + 1], sam.prompt_encoder.get_dense_pe(), sparse, dense, True)
            torch.testing.assert_close(m, out.pred_masks[i], atol=2e-5, rtol=1e-4)
            torch.testing.assert_close(iou, out.iou_scores[i], atol=2e-5, rtol=1e-4)


def test_msam_from_hub_weights_matches_the_official_encoder_and_transformers(hub, converted):
    _, model = hub
    state, config = converted
    # segment-anything's attention kernel, so the comparison with the official encoder can be bit-exact
    msam = build_msam(config, {"a": 1, "b": 2}, checkpoint=state, decomp="tucker", attention="sam").eval()
    official = build_sam(config)
    official.load_state_dict(state)
    x = images()
    with torch.no_grad():
        emb = msam.encode(x, "a", normalize=False)  # x is already SAM-normalised, 128 x 128
        assert torch.equal(emb, official.image_encoder(x))  # same modules, same weights: bit-exact
        torch.testing.assert_close(emb, model.vision_encoder(x).last_hidden_state, atol=2e-5, rtol=1e-5)
        reference = model(image_embeddings=emb, multimask_output=False).pred_masks[:, 0]  # (B, 1, 32, 32)
        torch.testing.assert_close(msam.decode("a", emb), reference, atol=1e-3, rtol=1e-3)  # eps 1e-5 vs 1e-6
        match_decoder_eps_(msam.decoders["a"])
        torch.testing.assert_close(msam.decode("a", emb), reference, atol=2e-5, rtol=1e-4)


def test_sharded_folder_reads_the_same(hub, converted, tmp_path):
    _, model = hub
    model.save_pretrained(tmp_path, max_shard_size="200KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    state, config = read_hub_sam(tmp_path)
    assert config == converted[1]
    assert state.keys() == converted[0].keys() and all(torch.equal(state[k], converted[0][k]) for k in state)


def test_tied_pe_copy_is_dropped_and_must_agree(hub):
    hf = dict(hub[1].state_dict())  # holds both copies of the PE matrix
    assert "prompt_encoder.shared_embedding.positional_embedding" in hf
    assert len(official_sam_state_dict(hf)) == len(hf) - 1
    hf["prompt_encoder.shared_embedding.positional_embedding"] = hf["shared_image_embedding.positional_embedding"] + 1
    with pytest.raises(SamCheckpointError, match="shared_embedding"):
        official_sam_state_dict(hf)


def test_unknown_key_is_named():
    with pytest.raises(SamCheckpointError, match="mask_decoder.hf_token.weight"):
        official_sam_state_dict({"mask_decoder.hf_token.weight": torch.zeros(1, 4)})


@pytest.mark.parametrize("section,key,value,match", [
    ("vision_config", "qkv_bias", False, "qkv_bias"),
    ("vision_config", "mlp_dim", 100, "mlp_dim"),
    ("vision_config", "num_pos_feats", 16, "num_pos_feats"),
    ("mask_decoder_config", "iou_head_depth", 4, "iou_head_depth"),
])
def test_config_the_official_modules_cannot_build_is_refused(hub, section, key, value, match):
    config = json.loads((hub[0] / "config.json").read_text())
    config[section][key] = value
    with pytest.raises(SamCheckpointError, match=match):
        sam_config_from_hub(config)


def test_other_model_types_and_missing_files_are_refused(hub, tmp_path):
    with pytest.raises(SamCheckpointError, match="sam2"):
        sam_config_from_hub({"model_type": "sam2"})
    shutil.copy(hub[0] / "config.json", tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        read_hub_sam(tmp_path)


def test_build_msam_takes_the_folder_itself(hub, converted):
    """`build_msam(..., checkpoint=<folder>)`: `read_sam_checkpoint` hands folders to `read_hub_sam`."""
    x = torch.rand(1, 3, 96, 128, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        from_folder = build_msam("tiny", {"a": 2}, checkpoint=hub[0]).eval()(x)
        from_state = build_msam("tiny", {"a": 2}, checkpoint=converted[0]).eval()(x)
    assert torch.equal(from_folder["a"], from_state["a"])
