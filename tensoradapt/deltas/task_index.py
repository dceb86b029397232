"""Task ids: an `int` (the whole batch) or a LongTensor `(B,)` of per-sample ids, checked against T.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["TaskIndex", "check_task_index"]

TaskIndex = int | Tensor

_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def _is_compiling() -> bool:
    try:
        return torch.compiler.is_compiling()
    except AttributeError:  # pragma: no cover - older torch
        return False


def check_task_index(task: TaskIndex, num_tasks: int) -> None:
    """Raise unless `task` is an int in `[0, num_tasks)` or a 1-D integer tensor of such ids."""
    if isinstance(task, bool):
        raise TypeError(f"task must be an int or a LongTensor of per-sample ids, got {task!r}")
    if isinstance(task, int):
        if not 0 <= task < num_tasks:
            raise IndexError(f"task id {task} is outside [0, T) with T={num_tasks}")
        return
    if not isinstance(task, Tensor):
        raise TypeError(f"task must be an int or a LongTensor of per-sample ids, got {type(task).__name__}")
    if task.dtype not in _INT_DTYPES:
        raise TypeError(f"task ids must be an integer tensor, got dtype {task.dtype}")
    if task.dim() != 1:
        raise ValueError(f"task ids must have shape (B,), got {tuple(task.shape)}")
    if _is_compiling() or task.numel() == 0:
        return  # the range check needs a host sync; skip it inside a compiled graph
    lo, hi = int(task.min()), int(task.max())
    if lo < 0 or hi >= num_tasks:
        bad = lo if lo < 0 else hi
        raise IndexError(f"task id {bad} is outside [0, T) with T={num_tasks}")
