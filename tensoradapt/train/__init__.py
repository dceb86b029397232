"""The training engine: one loop (AMP, DDP, accumulation, clipping, schedules, atomic checkpoints,
exact resume, JSONL logs) for every adapter configuration and any multi-task model.

The recipes built on it live in submodules, imported on use: `tensoradapt.train.finetune` (fine-tune an
mSAM: config, run, results) and `tensoradapt.train.ablation` (the decomposition x rank x seed sweep).
"""
from .checkpoint import (
    CheckpointError, load_checkpoint, load_trainable_state_dict, save_checkpoint, seed_everything,
    trainable_state_dict,
)
from .config import TrainConfig
from .distributed import DistInfo, cleanup_distributed, init_distributed, resolve_device
from .engine import NonFiniteLossError, Trainer
from .jsonl import JsonlLogger, read_jsonl
from .resume import BEST, CONFIG, LAST, LOG
from .sampling import ResumableDistributedSampler, SampleSeededDataset
from .schedule import build_scheduler, lr_factor

__all__ = [
    "TrainConfig", "Trainer", "NonFiniteLossError", "CheckpointError", "save_checkpoint", "load_checkpoint",
    "DistInfo", "init_distributed", "cleanup_distributed", "resolve_device", "ResumableDistributedSampler",
    "SampleSeededDataset", "trainable_state_dict", "load_trainable_state_dict", "seed_everything", "JsonlLogger",
    "read_jsonl", "build_scheduler", "lr_factor", "LAST", "BEST", "LOG", "CONFIG",
]
