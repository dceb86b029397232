"""The tiny-SAM pretraining recipe: SAM's promptable-mask objective on synthetic scenes, a fixed number of steps.

    from tensoradapt.train.pretrain import PretrainConfig, ensure_tiny_sam_checkpoint, pretrain_tiny_sam
    path = pretrained_checkpoint("tiny_p8")              # shipped in the package (shipped.py)
    path = ensure_tiny_sam_checkpoint()                  # tiny: cached; built once (default config, ~3 min)
    report = pretrain_tiny_sam("sam.pth", PretrainConfig(steps=5000, seed=1))

Modules, one job each: `config` (PretrainConfig, recipe version), `scenes` (rendered, SAM-preprocessed
scenes with instance masks), `prompts` (boxes and points from masks), `losses` (focal, Dice, mask IoU),
`decode` (prompted SAM decoder passes), `objective` (one batch's loss), `evaluate` (held-out prompted IoU),
`loop` (the fixed-step training run), `artifact` (checkpoint bytes and report on disk), `build` (the cache),
`shipped` (the checkpoint inside the package and its provenance).
"""
from .artifact import load_sam_checkpoint, read_report, report_path, write_checkpoint
from .build import checkpoint_mismatch, default_tiny_sam_path, ensure_tiny_sam_checkpoint
from .config import DEFAULT_STEPS, DOMAIN_GAPS, MASK_SETS, PRETRAIN_VERSION, PretrainConfig
from .evaluate import evaluate_checkpoint, evaluate_prompted_iou, format_report, heldout_scenes
from .loop import pretrain_tiny_sam
from .losses import dice_loss, focal_loss, mask_iou
from .scenes import SHELL_CLASSES, PromptScenes, input_size_for, palette_shift, shell_instances
from .shipped import (
    SHIPPED_CONFIG, ShippedCheckpointError, export_shipped, pretrained_checkpoint, shipped_checkpoint, shipped_paths,
)

__all__ = [
    "PRETRAIN_VERSION", "DEFAULT_STEPS", "DOMAIN_GAPS", "MASK_SETS", "PretrainConfig", "PromptScenes",
    "SHELL_CLASSES", "shell_instances", "input_size_for", "palette_shift", "pretrain_tiny_sam",
    "evaluate_prompted_iou", "evaluate_checkpoint", "heldout_scenes", "format_report", "default_tiny_sam_path", "ensure_tiny_sam_checkpoint",
    "checkpoint_mismatch", "load_sam_checkpoint", "write_checkpoint", "read_report", "report_path",
    "focal_loss", "dice_loss", "mask_iou", "SHIPPED_CONFIG", "ShippedCheckpointError", "export_shipped",
    "shipped_checkpoint", "shipped_paths", "pretrained_checkpoint",
]

