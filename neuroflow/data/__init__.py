"""Tasks and data: `TaskSpec`, the task registry, generic readers, loading, and the DataModule."""

from neuroflow.data.datamodule import MultiTaskDataModule
from neuroflow.data.loading import load_task
from neuroflow.data.registry import known_tasks, load_task_file, resolve_task
from neuroflow.data.samplers import MultiTaskBatchSampler, ShardSampler
from neuroflow.data.task_spec import TaskSpec

__all__ = [
    "TaskSpec", "resolve_task", "known_tasks", "load_task_file", "load_task",
    "MultiTaskDataModule", "MultiTaskBatchSampler", "ShardSampler",
]
