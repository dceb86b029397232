"""mSAM: multi-task SAM with task-aware tensor adapters, on top of the `segment-anything` package.

    from tensoradapt.sam import build_msam, save_msam, load_msam
    model = build_msam("tiny", {"semantic": 13, "depth": 1, "normal": 3}, checkpoint="sam_tiny.pth")
    out = model(images)          # images (B, 3, H, W) in [0, 1] -> {"semantic": (B, 13, H, W), ...}

One job per module: `config` (SamConfig, MSamConfig), `decomps` (which adaptations, default ranks),
`weights` (official SAM weights in), `encoder` (the mixed-task encoder pass), `model` (MultiTaskSAM,
build_msam), `report` (parameter counts), `serialization` (save_msam / load_msam).
`segment_anything` is imported through `tensoradapt.sam._import`, which works without torchvision.
"""
from .config import MODEL_TYPES, SAM_CONFIGS, MSamConfig, SamConfig, build_sam, get_sam_config
from . import decomps as _decomps
from .decomps import NO_DELTA, default_ranks, is_task_agnostic, msam_decomps
from .model import MultiTaskSAM, build_msam
from .report import parameter_breakdown
from .serialization import load_msam, save_msam
from .weights import SamCheckpointError, fit_sam_state_dict, read_sam_checkpoint

__all__ = [
    "build_msam", "MultiTaskSAM", "MSamConfig", "save_msam", "load_msam", "parameter_breakdown",
    "default_ranks", "DECOMPS", "NO_DELTA", "TASK_AGNOSTIC", "PAPER_RANKS", "SMALL_RANKS", "SamCheckpointError",
    "read_sam_checkpoint", "fit_sam_state_dict", "SamConfig", "SAM_CONFIGS", "MODEL_TYPES", "get_sam_config",
    "build_sam", "msam_decomps", "is_task_agnostic",
]


def __getattr__(name: str):
    if name in ("DECOMPS", "TASK_AGNOSTIC", "PAPER_RANKS", "SMALL_RANKS"):  # read from the delta registry
        return getattr(_decomps, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
