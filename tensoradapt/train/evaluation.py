"""Evaluating a multi-task model over a dataset: mean losses and every task metric, sharded across ranks.

Evaluation is sharded (each rank a disjoint `ShardSampler` slice, no padding) when every meter's statistics
sum across ranks: a meter with `all_reduce()`, with `state()` -> tensor / `load_state(tensor)`
(`tensoradapt.mtl`'s meters) or with `state_dict()` / `load_state_dict()`. Otherwise rank 0 evaluates the
whole split and broadcasts the result.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager, Mapping

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm  # not tqdm.auto: in notebooks that wants ipywidgets (and warns without them)

from .distributed import DistInfo, all_reduce_sum, barrier, broadcast_object
from .sampling import ShardSampler

__all__ = ["evaluate_tasks", "move_to", "meter_reduction"]


def move_to(batch: Any, device: torch.device) -> Any:
    """`batch` (tensors, possibly nested in dicts / lists / tuples) on `device`."""
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to(v, device) for v in batch)
    return batch


def meter_reduction(meter: Any) -> str | None:
    """How a meter's statistics are summed across ranks: "all_reduce", "tensor", "state_dict" or None."""
    if hasattr(meter, "all_reduce"):
        return "all_reduce"
    if callable(getattr(meter, "state", None)) and hasattr(meter, "load_state"):
        return "tensor"
    if hasattr(meter, "state_dict") and hasattr(meter, "load_state_dict"):
        return "state_dict"
    return None


def _sum_across_ranks(t: Tensor, device: torch.device) -> Tensor:
    dt = t.dtype
    buf = t.detach().to(torch.float64 if dt.is_floating_point else torch.int64).clone()
    buf = buf.to(device) if device.type == "cuda" else buf
    dist.all_reduce(buf)
    return buf.cpu().to(dt)


def _reduce_meters(meters: Mapping[str, Any], device: torch.device) -> None:
    for meter in meters.values():
        mode = meter_reduction(meter)
        if mode == "all_reduce":
            meter.all_reduce()
        elif mode == "tensor":
            meter.load_state(_sum_across_ranks(torch.as_tensor(meter.state()), device))
        elif mode == "state_dict":
            meter.load_state_dict({k: _sum_across_ranks(torch.as_tensor(v), device)
                                   for k, v in meter.state_dict().items()})


@torch.no_grad()
def evaluate_tasks(
    model: nn.Module,
    tasks: Mapping[str, Any],
    data: Dataset,
    *,
    batch_size: int,
    dist_info: DistInfo,
    input_key: str = "image",
    task_weight: Callable[[str], float] = lambda name: 1.0,
    num_workers: int = 0,
    collate_fn: Callable | None = None,
    autocast: Callable[[], ContextManager] = contextlib.nullcontext,
    progress: bool = False,
) -> dict[str, float]:
    """{"loss": sum_t w_t loss_t, "loss/<task>": mean loss, "<task>/<metric>": value} over `data`.

    Every rank must call it (it holds collectives); each gets the same dict. The model's train / eval
    mode is restored afterwards.
    """
    device = dist_info.device
    meters = {name: spec.new_meter() for name, spec in tasks.items()}
    shard = dist_info.world_size == 1 or None not in {meter_reduction(m) for m in meters.values()}
    names = list(tasks)
    sums = torch.zeros(len(names) + 1, dtype=torch.float64)  # per-task loss * n, then n
    was_training = model.training
    model.eval()
    if shard or dist_info.is_main:
        sampler = ShardSampler(len(data), dist_info.rank, dist_info.world_size) if shard else None
        loader = DataLoader(data, batch_size=batch_size, sampler=sampler, shuffle=False,
                            num_workers=num_workers, collate_fn=collate_fn)
        for batch in tqdm(loader, desc="eval", disable=not (dist_info.is_main and progress),
                          dynamic_ncols=True, leave=False):
            batch = move_to(batch, device)
            with autocast():
                outputs = model(batch[input_key])
            n = batch[input_key].shape[0]
            for i, name in enumerate(names):
                logits = outputs[name].float()
                sums[i] += float(tasks[name].loss(logits, batch[name])) * n
                meters[name].update(logits, batch[name])
            sums[-1] += n
    if dist_info.world_size > 1:
        if shard:
            _reduce_meters(meters, device)
            sums = all_reduce_sum(sums.to(device) if device.type == "cuda" else sums).cpu()
        else:
            barrier()
    model.train(was_training)
    metrics: dict[str, float] = {}
    if shard or dist_info.is_main:
        count = max(float(sums[-1]), 1.0)
        total = 0.0
        for i, name in enumerate(names):
            metrics[f"loss/{name}"] = float(sums[i]) / count
            total += task_weight(name) * metrics[f"loss/{name}"]
            for k, v in meters[name].compute().items():
                metrics[f"{name}/{k}"] = float(v)
        metrics = {"loss": total, **metrics}
    if dist_info.world_size > 1 and not shard:
        metrics = broadcast_object(metrics)
    return metrics
