"""tensoradapt: task-aware tensor adaptation of foundation models.

One frozen model, T tasks: every adapted `nn.Linear` (or `nn.MultiheadAttention` projection) gets a factorised
update tensor `(T, d_out, d_in)` (CP, Tucker = TA-LoRA, TT, or LoRA baselines) whose factors the tasks share.
"""
from .deltas import (
    DELTA_CLASSES, CPDelta, LoRADelta, SharedLoRADelta, TaskDelta, TTDelta, TuckerDelta, make_delta,
    parse_ranks, unregister_delta,
)
from .inject import (
    AdapterConfig, adapt, adapter_state_dict, count_parameters, load_adapter, load_adapter_state_dict,
    mark_trainable, merge_adapters, save_adapter, set_merged_inference, trainable_parameters_report,
    unmerge_adapters,
)
from .layers import TaskLinear, TaskProjection, qkv_rows, task_deltas, task_linears, task_projections
from .mha import TaskMultiheadAttention
from .regularizers import gram_deviation, orthogonality_penalty
from .routing import enable_task_kwarg, set_task, task_scope

__version__ = "0.1.0"

__all__ = [
    "TaskDelta", "CPDelta", "TuckerDelta", "TTDelta", "LoRADelta", "SharedLoRADelta", "DECOMPS",
    "DELTA_CLASSES", "make_delta", "parse_ranks", "unregister_delta", "TaskLinear", "qkv_rows",
    "TaskProjection", "TaskMultiheadAttention", "task_projections",
    "AdapterConfig", "adapt", "set_task", "task_scope", "enable_task_kwarg", "mark_trainable",
    "count_parameters", "trainable_parameters_report", "adapter_state_dict", "load_adapter_state_dict",
    "save_adapter", "load_adapter", "merge_adapters", "unmerge_adapters", "set_merged_inference",
    "task_linears", "task_deltas", "orthogonality_penalty", "gram_deviation", "__version__",
]


def __getattr__(name: str):
    if name == "DECOMPS":  # the registered decompositions, read when asked for (see deltas.DECOMPS)
        from .deltas import DECOMPS

        return DECOMPS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
