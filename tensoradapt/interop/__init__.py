"""Interoperability: host presets (transformers' SAM family, segment-anything).

Nothing here imports `transformers` or `peft`.
"""
from .hosts import ENCODER_QKV_TARGETS, encoder_qkv_targets

__all__ = ["ENCODER_QKV_TARGETS", "encoder_qkv_targets"]
