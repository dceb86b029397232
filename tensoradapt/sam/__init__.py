"""mSAM: multi-task SAM with task-aware tensor adapters, on `segment-anything` or on transformers' SAM 2.

    from tensoradapt.sam import build_msam, save_msam, load_msam
    model = build_msam("tiny", {"semantic": 13, "depth": 1, "normal": 3}, checkpoint="sam_tiny.pth")
    model = build_msam("sam2_hiera_tiny", tasks, checkpoint="sam2.1-hiera-tiny/")  # save_pretrained folder
    out = model(images)          # images (B, 3, H, W) in [0, 1] -> {"semantic": (B, 13, H, W), ...}

One job per module: `config` (SamConfig, MSamConfig), `decomps` (which adaptations, default ranks),
`weights` (official SAM weights in), `encoder` (the mixed-task encoder pass), `multitask` (what every
mSAM shares: tasks, trainable set, the mixed-task forward), `model` (MultiTaskSAM, build_msam), `sam2_config`
/ `sam2_weights` / `sam2_model` (mSAM-2 on SAM 2), `report` (parameter counts), `serialization` (save_msam
/ load_msam). `segment_anything` is imported through `tensoradapt.sam._import`, which works without
torchvision; transformers only when a SAM 2 model is built.
"""
from . import decomps as _decomps
from .config import (
    ENCODER_TARGETS, MODEL_TYPES, SAM_CONFIGS, MSamConfig, SamConfig, build_sam, get_model_config, get_sam_config,
)
from .decomps import NO_DELTA, default_ranks, is_task_agnostic, msam_decomps
from .model import MultiTaskSAM, build_msam, msam_from_config
from .multitask import MultiTaskSAMBase
from .report import MSAM_PARAM_GROUPS, msam_param_groups, parameter_breakdown
from .sam2_config import SAM2_CONFIGS, SAM2_MODEL_TYPES, Sam2HieraConfig, build_sam2, get_sam2_config
from .sam2_model import MultiTaskSAM2
from .serialization import load_msam, save_msam
from .weights import SamCheckpointError, fit_sam_state_dict, read_sam_checkpoint

__all__ = [
    "build_msam", "MultiTaskSAM", "MSamConfig", "ENCODER_TARGETS", "save_msam", "load_msam", "parameter_breakdown",
    "default_ranks", "DECOMPS", "NO_DELTA", "TASK_AGNOSTIC", "PAPER_RANKS", "SMALL_RANKS", "SamCheckpointError",
    "read_sam_checkpoint", "fit_sam_state_dict", "SamConfig", "SAM_CONFIGS", "MODEL_TYPES", "get_sam_config",
    "msam_decomps", "is_task_agnostic", "MSAM_PARAM_GROUPS", "msam_param_groups",
    "build_sam", "MultiTaskSAMBase", "MultiTaskSAM2", "msam_from_config", "get_model_config", "Sam2HieraConfig",
    "SAM2_CONFIGS", "SAM2_MODEL_TYPES", "get_sam2_config", "build_sam2",
]


def __getattr__(name: str):
    if name in ("DECOMPS", "TASK_AGNOSTIC", "PAPER_RANKS", "SMALL_RANKS"):  # read from the delta registry
        return getattr(_decomps, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
