"""mSAM: multi-task SAM with task-aware tensor adapters, on top of the `segment-anything` package.

    from tensoradapt.sam import build_msam, save_msam, load_msam
    model = build_msam("tiny", {"semantic": 13, "depth": 1, "normal": 3}, checkpoint="sam_tiny.pth")
    out = model(images)          # images (B, 3, H, W) in [0, 1] -> {"semantic": (B, 13, H, W), ...}

`segment_anything` is imported through `tensoradapt.sam._import`, which works without torchvision.
"""
from .weights import SamCheckpointError, fit_sam_state_dict, read_sam_checkpoint
from .config import SAM_CONFIGS, SamConfig, build_sam, get_sam_config
from .msam import (
    DECOMPS, PAPER_RANKS, SMALL_RANKS, TASK_AGNOSTIC, MSamConfig, MultiTaskSAM, build_msam, default_ranks,
    load_msam, parameter_breakdown, save_msam,
)

__all__ = [
    "build_msam", "MultiTaskSAM", "MSamConfig", "save_msam", "load_msam", "parameter_breakdown",
    "default_ranks", "DECOMPS", "TASK_AGNOSTIC", "PAPER_RANKS", "SMALL_RANKS", "SamCheckpointError",
    "read_sam_checkpoint", "fit_sam_state_dict", "SamConfig", "SAM_CONFIGS", "get_sam_config", "build_sam",
]
