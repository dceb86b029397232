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
    task_table,
)
from .rendered_tasks import RENDERED_TASKS, EdgeMeter, EdgeTask, RegressionMeter, RegressionTask

__all__ = [
    "TaskSpec", "SemanticTask", "DepthTask", "NormalTask", "Meter", "ConfusionMeter", "DepthMeter",
    "NormalMeter", "NYUV2_TASKS", "get_tasks", "delta_m", "delta_m_per_task", "delta_m_report",
    "MultiTaskMeter", "task_losses", "task_table", "RENDERED_TASKS", "EdgeTask", "EdgeMeter", "RegressionTask",
    "RegressionMeter",
]
