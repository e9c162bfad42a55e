"""The model's task list: specs, their dicts (checkpoints) or registered names, checked once."""

from __future__ import annotations

from neuroflow.data.task_spec import TaskSpec


def as_task_specs(tasks: list[TaskSpec] | None) -> list[TaskSpec]:
    """Accept specs, their dicts (from a checkpoint's hparams) or registered task names."""
    if not tasks:
        raise ValueError(
            "MultiTaskModule needs `tasks`: in Python pass `tasks=datamodule.task_specs`; with the "
            "CLI they come from `data` (check the data section of the config)"
        )
    specs: list[TaskSpec] = []
    for task in tasks:
        if isinstance(task, TaskSpec):
            specs.append(task)
        elif isinstance(task, dict):
            specs.append(TaskSpec.from_dict(task, origin=f"model.tasks[{len(specs)}]"))
        elif isinstance(task, str):
            from neuroflow.data import resolve_task

            specs.append(resolve_task(task))
        else:
            raise ValueError(f"model.tasks[{len(specs)}]: expected a TaskSpec, got {type(task).__name__}")
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"model.tasks: duplicate task names {duplicates}")
    return specs
