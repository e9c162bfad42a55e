"""Map-style torch datasets over tokenized `datasets.Dataset`s that fetch whole batches at once."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import datasets
from torch.utils.data import Dataset


class TaskDataset(Dataset):
    """One task's split. `__getitems__` reads a batch in one columnar slice (much faster than row
    by row) and tags it with the task name for the collator."""

    def __init__(self, task: str, data: datasets.Dataset) -> None:
        self.task, self.data = task, data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"task": self.task, "rows": self.data[[int(index)]]}

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Any]:
        return {"task": self.task, "rows": self.data[[int(i) for i in indices]]}


class MultiTaskDataset(Dataset):
    """All tasks' training splits; keys are `(task_index, row)` pairs, one task per batch."""

    def __init__(self, tasks: Mapping[str, datasets.Dataset]) -> None:
        self.names = list(tasks)
        self.parts = [TaskDataset(name, data) for name, data in tasks.items()]

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    @property
    def sizes(self) -> list[int]:
        return [len(p) for p in self.parts]

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        task, row = key
        return self.parts[task][row]

    def __getitems__(self, keys: Sequence[tuple[int, int]]) -> dict[str, Any]:
        tasks = {t for t, _ in keys}
        if len(tasks) != 1:
            raise ValueError(f"a batch must hold one task, got task indices {sorted(tasks)}")
        return self.parts[keys[0][0]].__getitems__([r for _, r in keys])
