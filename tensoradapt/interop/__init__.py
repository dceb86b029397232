"""Interoperability: PEFT LoRA adapters in and out, transformers' Hub-format SAM weights, host presets.

Nothing here imports `transformers` or `peft`: the formats are read and written directly.
"""
from .hosts import ENCODER_QKV_TARGETS, encoder_qkv_targets
from .hub_sam import is_hub_sam_folder, official_sam_state_dict, read_hub_sam, sam_config_from_hub
from .peft import LayerFit, PeftFitReport, PeftLoRA, from_peft, lora_factors, read_peft_lora, to_peft

__all__ = [
    "ENCODER_QKV_TARGETS", "encoder_qkv_targets", "read_hub_sam", "sam_config_from_hub", "official_sam_state_dict",
    "is_hub_sam_folder", "from_peft", "to_peft", "read_peft_lora", "lora_factors", "PeftLoRA", "LayerFit",
    "PeftFitReport",
]
