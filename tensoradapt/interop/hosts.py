"""Where each known host keeps its image encoder's fused qkv projections (the paper adapts these).

`adapt()` takes any module tree; this table only saves writing the regex for the SAM family:

    from transformers import SamModel
    model = SamModel.from_pretrained("facebook/sam-vit-base")
    tensoradapt.adapt(model, encoder_qkv_targets(model), decomp="tucker", num_tasks=3, ranks=(4, 32, 32))

The hosts are matched by class name, so nothing here imports transformers or segment-anything. Every host
listed partitions windows sample-major before `qkv` (`B * k` rows, `k` windows per image; Hiera's `k`
changes from stage to stage and its query pooling comes after `qkv`), which is the layout per-sample task
ids are routed by.
"""
from __future__ import annotations

from torch import nn

__all__ = ["ENCODER_QKV_TARGETS", "encoder_qkv_targets"]

_VIT = r"vision_encoder\.layers\.\d+\.attn\.qkv"
_HIERA = r"backbone\.blocks\.\d+\.attn\.qkv"

#: host class name -> regex (full-name match, as `adapt(targets=str)` reads it) of its encoder's qkv linears
ENCODER_QKV_TARGETS: dict[str, str] = {
    "SamModel": _VIT,  # transformers: ViT with windowed + global blocks
    "SamVisionModel": _VIT,
    "SamHQModel": _VIT,
    "SamHQVisionModel": _VIT,
    "Sam2Model": rf"vision_encoder\.{_HIERA}",  # transformers: Hiera, per-stage windows, query pooling
    "Sam2VisionModel": _HIERA,
    "Sam": r"image_encoder\.blocks\.\d+\.attn\.qkv",  # segment-anything
    "ImageEncoderViT": r"blocks\.\d+\.attn\.qkv",
}


def encoder_qkv_targets(model: nn.Module) -> str:
    """The `targets` regex of `model`'s image-encoder qkv linears (see `ENCODER_QKV_TARGETS`)."""
    name = type(model).__name__
    if name not in ENCODER_QKV_TARGETS:
        raise ValueError(
            f"model is a {name}, which has no qkv preset; known hosts: {sorted(ENCODER_QKV_TARGETS)}. "
            "Pass adapt(model, targets=...) a regex or list of module names instead"
        )
    return ENCODER_QKV_TARGETS[name]
