"""Multi-task learning: the task table (losses, activations, metrics with directions) and Δm."""
from .metrics import MultiTaskMeter, delta_m, delta_m_per_task, delta_m_report, task_losses
from .tasks import (
    NYUV2_TASKS,
    ConfusionMeter,
    DepthMeter,
    DepthTask,
    Meter,
    NormalMeter,
    NormalTask,
    SemanticTask,
    TaskSpec,
    get_tasks,
)

__all__ = [
    "TaskSpec", "SemanticTask", "DepthTask", "NormalTask", "Meter", "ConfusionMeter", "DepthMeter",
    "NormalMeter", "NYUV2_TASKS", "get_tasks", "delta_m", "delta_m_per_task", "delta_m_report",
    "MultiTaskMeter", "task_losses",
]
