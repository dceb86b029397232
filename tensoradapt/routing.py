"""Route a task to every adapted layer of a model without changing the model's forward signature.

`task` is an int (the whole batch) or a LongTensor `(B,)` of per-sample ids. It is validated here, once
(for a tensor: one host read of its range) and moved to the layers' device; the layers' forwards then use
it without reading or copying it again.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .deltas import TaskIndex, check_task_index, checked_ids_on
from .layers import TaskProjection, task_projections

__all__ = ["set_task", "task_scope", "enable_task_kwarg"]


def _num_tasks(layers: list[TaskProjection], model: nn.Module) -> int:
    counts = {layer.num_tasks for layer in layers}
    if not counts:
        raise ValueError(f"{type(model).__name__} has no TaskLinear or adapted attention: call adapt(...) first")
    if len(counts) > 1:
        raise ValueError(f"adapted layers disagree on the number of tasks: {sorted(counts)}")
    return counts.pop()


def set_task(model: nn.Module, task: TaskIndex | None) -> None:
    """Route every adapted projection of `model` to `task` (an int or per-sample ids `(B,)`; None clears)."""
    layers = [layer for _, layer in task_projections(model)]
    if task is not None:
        if isinstance(task, Tensor) and task.dim() == 0:
            task = int(task)
        check_task_index(task, _num_tasks(layers, model))
        devices = {layer.weight.device for layer in layers}
        if isinstance(task, Tensor) and len(devices) == 1:
            task = checked_ids_on(task, devices.pop())
    for layer in layers:
        layer.task = task


@contextmanager
def task_scope(model: nn.Module, task: TaskIndex) -> Iterator[nn.Module]:
    """`with task_scope(model, task): model(x)` routes `task` and restores the previous routing."""
    previous = [(layer, layer.task) for _, layer in task_projections(model)]
    set_task(model, task)
    try:
        yield model
    finally:
        for layer, old in previous:
            layer.task = old


def enable_task_kwarg(model: nn.Module, name: str = "task") -> tuple[RemovableHandle, RemovableHandle]:
    """Let `model(x, task=...)` route tasks: a forward pre-hook pops the kwarg (as PEFT's Poly does).

    Returns the hook handles; `.remove()` them to undo.
    """

    def pre(module, args, kwargs):
        if name in kwargs:
            task = kwargs.pop(name)
            module._tensoradapt_saved = [(layer, layer.task) for _, layer in task_projections(module)]
            set_task(module, task)
        return args, kwargs

    def post(module, args, kwargs, output):
        for layer, old in getattr(module, "_tensoradapt_saved", []):
            layer.task = old
        module._tensoradapt_saved = []
        return output

    return (
        model.register_forward_pre_hook(pre, with_kwargs=True),
        model.register_forward_hook(post, with_kwargs=True),
    )
