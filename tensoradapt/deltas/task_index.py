"""Task ids: an `int` (the whole batch) or a LongTensor `(B,)` of per-sample ids, checked against T.

The range check of a tensor of ids reads its values on the host, a device -> host sync on a GPU. It is
done once per tensor: the checked tensor is remembered (weakly, with its version counter) together with
its largest id, so the same ids routed to every adapted layer cost one sync where they are routed
(`set_task`, `task_scope`, the task-kwarg hook, or the first layer that sees them) and none in the
layers' forwards. Changing the ids in place bumps the version and they are checked again (inference
tensors have no version counter: ids made under `torch.inference_mode` are trusted once checked).
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.weak import WeakIdKeyDictionary

__all__ = ["TaskIndex", "check_task_index", "checked_ids_on", "repeated_task_ids"]

TaskIndex = int | Tensor

_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)

#: checked id tensors -> (version counter when checked, largest id + 1)
_checked: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _is_compiling() -> bool:
    try:
        return torch.compiler.is_compiling()
    except AttributeError:  # pragma: no cover - older torch
        return False


def _version(task: Tensor) -> int | None:
    """The version counter (None for inference tensors, which have none)."""
    return None if task.is_inference() else task._version


def _out_of_range(bad: int, num_tasks: int) -> IndexError:
    return IndexError(f"task id {bad} is outside [0, T) with T={num_tasks}")


def check_task_index(task: TaskIndex, num_tasks: int) -> None:
    """Raise unless `task` is an int in `[0, num_tasks)` or a 1-D integer tensor of such ids.

    A tensor's values are read (one host sync) only the first time it is seen, or after an in-place change.
    """
    if isinstance(task, bool):
        raise TypeError(f"task must be an int or a LongTensor of per-sample ids, got {task!r}")
    if isinstance(task, int):
        if not 0 <= task < num_tasks:
            raise _out_of_range(task, num_tasks)
        return
    if not isinstance(task, Tensor):
        raise TypeError(f"task must be an int or a LongTensor of per-sample ids, got {type(task).__name__}")
    if task.dtype not in _INT_DTYPES:
        raise TypeError(f"task ids must be an integer tensor, got dtype {task.dtype}")
    if task.dim() != 1:
        raise ValueError(f"task ids must have shape (B,), got {tuple(task.shape)}")
    if _is_compiling() or task.numel() == 0:
        return  # the range check needs a host sync; skip it inside a compiled graph
    seen = _checked.get(task)
    if seen is not None and seen[0] == _version(task):
        if seen[1] > num_tasks:
            raise _out_of_range(seen[1] - 1, num_tasks)
        return
    lo, hi = torch.stack([task.min(), task.max()]).tolist()  # the one sync
    if lo < 0:
        raise _out_of_range(lo, num_tasks)
    if hi >= num_tasks:
        raise _out_of_range(hi, num_tasks)
    _checked[task] = (_version(task), hi + 1)


def checked_ids_on(task: Tensor, device: torch.device) -> Tensor:
    """`task` as int64 on `device`, still known as checked (call after `check_task_index`): routing moves the
    ids once, so that the layers' forwards copy nothing (a blocking host -> device copy per layer)."""
    ids = task.to(device=device, dtype=torch.long)
    if _is_compiling():
        return ids  # nothing is remembered inside a compiled graph (nor checked: see check_task_index)
    seen = _checked.get(task)
    if ids is not task and seen is not None and seen[0] == _version(task):
        _checked[ids] = (_version(ids), seen[1])
    return ids


def repeated_task_ids(tasks: list[int] | tuple[int, ...], repeats: int, device: torch.device | str) -> Tensor:
    """Per-sample ids `(len(tasks) * repeats,)`: each task id repeated `repeats` times, task-major (a mixed-task
    batch of `repeats` images per task). Filled on `device` (no host -> device copy) and remembered as checked,
    since their range is known on the host: routing them costs no sync."""
    tasks = [int(t) for t in tasks]
    if not tasks or min(tasks) < 0:
        raise ValueError(f"tasks must be a non-empty list of ids >= 0, got {tasks}")
    ids = torch.cat([torch.full((repeats,), t, dtype=torch.long, device=device) for t in tasks])
    if not _is_compiling():
        _checked[ids] = (_version(ids), max(tasks) + 1)
    return ids
