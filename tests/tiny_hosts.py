"""Tiny transformers SAM hosts with random weights of a sensible scale (nothing is downloaded).

transformers 5 initialises a random `SamModel`'s vision tower at std 1e-10 and zeroes its position tables,
which would make every equality check trivially true; `randomize_host_` gives every tensor O(1) activations.
"""
from __future__ import annotations

import copy
import math
from functools import lru_cache

import torch
from torch import nn

HOSTS = ("sam", "sam2", "sam_hq")
IMAGE = 64  # input side of every tiny host

# A ViT with 2 windowed blocks (window 3 on an 8 x 8 grid: padded to 9 x 9, k = 9 windows) and 1 global block.
_VISION = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, global_attn_indexes=[1], image_size=IMAGE,
               patch_size=8, window_size=3, output_channels=32, num_pos_feats=16, mlp_dim=128)
_PROMPT = dict(hidden_size=32, image_size=IMAGE, patch_size=8, mask_input_channels=8)
_DECODER = dict(hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32, num_hidden_layers=2)
# Hiera: 4 stages on a 16 x 16 grid, windows 4, 2, 2, 1 (k = 16, 4, ..), query pooling entering stages 1-3,
# widths 8 -> 64, one global block.
_HIERA = dict(model_type="sam2_hiera_det_model", hidden_size=8, image_size=[IMAGE, IMAGE],
              blocks_per_stage=[1, 1, 2, 1], embed_dim_per_stage=[8, 16, 32, 64], num_attention_heads_per_stage=[1, 1, 2, 2],
              window_size_per_stage=[4, 2, 2, 1], global_attention_blocks=[3],
              window_positional_embedding_background_size=[4, 4])


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Weights ~ N(0, 1/fan_in), norm gains 1 + 0.1 N(0, 1), other vectors 0.1 N(0, 1), positional-embedding
    buffers N(0, 1): outputs O(1) and every tensor matters (transformers draws N(0, 0.02) and zeros the
    position tables, which would make equality tests nearly vacuous)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype)
            if p.dim() >= 2:
                p.copy_(noise / math.sqrt(p[0].numel()))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * noise)
            else:
                p.copy_(0.1 * noise)
        for name, b in model.named_buffers():
            if "positional_embedding" in name:
                b.copy_(torch.randn(b.shape, generator=g, dtype=torch.float64).to(b.dtype))
    return model


def randomize_host_(model: nn.Module, seed: int = 0) -> nn.Module:
    """`randomize_`, then eval mode."""
    return randomize_(model, seed).eval()


def randomize_deltas_(model: nn.Module, std: float = 0.3) -> nn.Module:
    """Give every task delta of `model` random factors ~ std * N(0, 1) (the zero start makes checks trivial)."""
    from strategies import randomize_
    from tensoradapt import task_deltas

    for i, (_, delta) in enumerate(task_deltas(model)):
        randomize_(delta, seed=i)
        with torch.no_grad():
            for p in delta.parameters():
                p.mul_(std)
    return model


def sam_config(**vision):
    from transformers import SamConfig

    return SamConfig(vision_config={**_VISION, **vision}, prompt_encoder_config=_PROMPT, mask_decoder_config=_DECODER)


@lru_cache(maxsize=None)
def _base(host: str) -> nn.Module:
    import transformers as tr

    if host == "sam":
        model = tr.SamModel(sam_config())
    elif host == "sam_hq":
        model = tr.SamHQModel(tr.SamHQConfig(
            vision_config=_VISION, prompt_encoder_config=_PROMPT, mask_decoder_config=dict(_DECODER, vit_dim=32),
        ))
    elif host == "sam2":
        model = tr.Sam2Model(tr.Sam2Config(
            vision_config=dict(backbone_config=_HIERA, backbone_channel_list=[64, 32, 16, 8],
                               backbone_feature_sizes=[[16, 16], [8, 8], [4, 4]], fpn_hidden_size=32),
            prompt_encoder_config=dict(_PROMPT, patch_size=16), mask_decoder_config=_DECODER,
        ))
    else:
        raise ValueError(f"host must be one of {HOSTS}, got {host!r}")
    return randomize_host_(model)


def build_host(host: str) -> nn.Module:
    """A fresh copy of the tiny random `host` (the same weights every call)."""
    return copy.deepcopy(_base(host))


def host_inputs(batch: int = 3, seed: int = 1) -> dict[str, torch.Tensor]:
    """pixel_values (B, 3, 64, 64) and one point prompt per image, (B, 1, 1, 2)."""
    g = torch.Generator().manual_seed(seed)
    return {
        "pixel_values": torch.randn(batch, 3, IMAGE, IMAGE, generator=g),
        "input_points": torch.rand(batch, 1, 1, 2, generator=g) * IMAGE,
    }


def masks(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The host's low-resolution mask logits (B, point batch, masks, h, w)."""
    return model(**inputs).pred_masks
