"""Moved to :mod:`tensoradapt.train.pretrain` (the pretraining recipe is a training recipe, not part of mSAM).

A thin re-export kept only so that ``experiments/sam_mtl.py`` (``from tensoradapt.sam.pretrained import
ensure_tiny_sam_checkpoint``) runs unchanged until it imports from :mod:`tensoradapt.train.pretrain`; then
delete this file. Nothing here is defined anew.
"""
from ..train.pretrain import (  # noqa: F401
    PRETRAIN_VERSION, PretrainConfig, PromptScenes, default_tiny_sam_path, dice_loss, ensure_tiny_sam_checkpoint,
    evaluate_prompted_iou, focal_loss, format_report, load_sam_checkpoint, pretrain_tiny_sam,
)

__all__ = [
    "PRETRAIN_VERSION", "PretrainConfig", "PromptScenes", "default_tiny_sam_path", "pretrain_tiny_sam",
    "evaluate_prompted_iou", "format_report", "load_sam_checkpoint", "ensure_tiny_sam_checkpoint",
    "focal_loss", "dice_loss",
]
