"""Batch assembly: dynamic padding per batch, and the `task` key every batch carries."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from neuroflow.data.image_transform import ImageTransform
from neuroflow.data.llm_collate import collate_causal
from neuroflow.data.llm_spec import LLM_KINDS
from neuroflow.data.padding import LABEL_PAD, pad_sequences

__all__ = ["LABEL_PAD", "MultiTaskCollator", "TaskCollator", "as_columns", "pad_sequences"]


def as_columns(rows: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """Rows as columns: `dataset[list_of_indices]` already is; a list of row dicts is transposed."""
    if isinstance(rows, Mapping):
        return rows
    return {k: [r[k] for r in rows] for k in rows[0]} if rows else {}


class TaskCollator:
    """Builds one task's batches in the format of `docs/architecture.md`.

    Args:
        task: the task name, stored as `batch["task"]`.
        kind: the task kind (decides the keys).
        pad_token_id: the tokenizer's pad id (text kinds).
        padding_side: `right` or `left`, as the tokenizer pads (causal-LM kinds choose their sides
            per use: `neuroflow.data.llm_collate`).
        pad_to_multiple_of: round padded lengths up (tensor-core friendly); None pads to the longest.
        image_transform: turns stored images into `pixel_values` (image kind).
    """

    def __init__(
        self,
        task: str,
        kind: str,
        pad_token_id: int = 0,
        padding_side: str = "right",
        pad_to_multiple_of: int | None = None,
        image_transform: ImageTransform | None = None,
    ) -> None:
        if kind == "image_classification" and image_transform is None:
            raise ValueError(f"task {task!r}: image batches need an image_transform")
        self.task, self.kind = task, kind
        self.pad_token_id, self.padding_side, self.multiple = pad_token_id, padding_side, pad_to_multiple_of
        self.image_transform = image_transform

    def __call__(self, rows: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        cols = as_columns(rows)
        batch: dict[str, Any] = {"task": self.task}
        if self.kind == "image_classification":
            batch["pixel_values"] = self.image_transform(cols["image"])
            batch["labels"] = torch.as_tensor(cols["label"], dtype=torch.long)
            return batch
        if self.kind in LLM_KINDS:
            batch.update(collate_causal(cols, self.kind, self.pad_token_id, self.multiple))
            return batch
        pad = lambda key, value: pad_sequences(cols[key], value, self.padding_side, self.multiple)  # noqa: E731
        batch["input_ids"] = pad("input_ids", self.pad_token_id)
        batch["attention_mask"] = pad("attention_mask", 0)
        if "token_type_ids" in cols:
            batch["token_type_ids"] = pad("token_type_ids", 0)
        if self.kind == "text2text":
            # Targets are always right-padded: decoders read them left to right.
            batch["labels"] = pad_sequences(cols["labels"], LABEL_PAD, "right", None)
            batch["label_index"] = torch.as_tensor(cols["label_index"], dtype=torch.long)
        else:
            batch["labels"] = torch.as_tensor(cols["labels"], dtype=torch.long)
        return batch


class MultiTaskCollator:
    """Dispatches a single-task batch (`{"task": name, "rows": ...}`) to that task's collator."""

    def __init__(self, collators: Mapping[str, TaskCollator]) -> None:
        self.collators = dict(collators)

    def __call__(self, item: Mapping[str, Any]) -> dict[str, Any]:
        return self.collators[item["task"]](item["rows"])
