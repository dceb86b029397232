"""Interoperability: transformers' Hub-format SAM weights, host presets.

Nothing here imports `transformers` or `peft`: the formats are read and written directly.
"""
from .hosts import ENCODER_QKV_TARGETS, encoder_qkv_targets
from .hub_sam import is_hub_sam_folder, official_sam_state_dict, read_hub_sam, sam_config_from_hub

__all__ = [
    "ENCODER_QKV_TARGETS", "encoder_qkv_targets", "read_hub_sam", "sam_config_from_hub", "official_sam_state_dict",
    "is_hub_sam_folder",
]
