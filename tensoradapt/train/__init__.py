"""The training engine: one loop (AMP, DDP, accumulation, clipping, schedules, atomic checkpoints,
exact resume, JSONL logs) for every adapter configuration and any multi-task model."""
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .distributed import DistInfo, cleanup_distributed, init_distributed, resolve_device
from .engine import (
    BEST, CONFIG, LAST, LOG, NonFiniteLossError, ResumableDistributedSampler, Trainer,
    load_trainable_state_dict, seed_everything, trainable_state_dict,
)
from .jsonl import JsonlLogger, read_jsonl
from .schedule import build_scheduler, lr_factor

__all__ = [
    "TrainConfig", "Trainer", "NonFiniteLossError", "CheckpointError", "save_checkpoint", "load_checkpoint",
    "DistInfo", "init_distributed", "cleanup_distributed", "resolve_device", "ResumableDistributedSampler",
    "trainable_state_dict", "load_trainable_state_dict", "seed_everything", "JsonlLogger", "read_jsonl",
    "build_scheduler", "lr_factor", "LAST", "BEST", "LOG", "CONFIG",
]
