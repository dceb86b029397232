"""Factorised task deltas: one `(T, d_out, d_in)` update tensor per adapted linear layer.

Each decomposition is one class (one file) that registers itself under its `decomp` name; `DELTA_CLASSES`
and `DECOMPS` list what is registered when they are read.
"""
from __future__ import annotations

from .base import INITS, ORTHOGONALITY_TERMS, PAPER_WIDTH, TaskDelta, check_init
from .registry import DELTA_CLASSES, delta_class, make_delta, parse_ranks, register_delta, unregister_delta
from .task_index import TaskIndex, check_task_index, checked_ids_on, repeated_task_ids

# Imported in this order so that DECOMPS reads ("cp", "tucker", "tt", "lora", "shared-lora").
from .cp import CPDelta
from .tucker import TuckerDelta
from .tt import TTDelta
from .lora import LoRADelta, SharedLoRADelta

__all__ = [
    "TaskDelta", "TaskIndex", "CPDelta", "TuckerDelta", "TTDelta", "LoRADelta", "SharedLoRADelta",
    "DELTA_CLASSES", "DECOMPS", "INITS", "check_init", "ORTHOGONALITY_TERMS", "PAPER_WIDTH", "make_delta", "parse_ranks",
    "check_task_index", "checked_ids_on", "repeated_task_ids", "delta_class", "register_delta", "unregister_delta",
]


def __getattr__(name: str):
    if name == "DECOMPS":  # the registered names, read when asked for (a tuple cannot follow the registry)
        return tuple(DELTA_CLASSES)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
