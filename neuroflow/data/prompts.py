"""Canonical rows of the causal-LM kinds: the rendered prompt, the target or the choices, the label.

`load_task` calls `canonicalize_llm` for `instruction`, `multiple_choice` and `generation` tasks;
the result has the columns `prompt` (str), `target` (str; instruction/generation) or `choices`
(list of str; multiple_choice), and `label` (the gold choice or verbalized class; 0 when the target
comes from a column), so splits, caps and the tokenization cache work as for classification.
"""

from __future__ import annotations

from typing import Any

import datasets
import numpy as np

from neuroflow.data.labels import map_labels
from neuroflow.data.llm_spec import template_fields
from neuroflow.data.task_spec import TaskSpec


def _column_names(table: Any) -> list[str]:
    return list(table.column_names if isinstance(table, datasets.Dataset) else table.keys())


def _as_text(value: Any, column: str, row: int, spec: TaskSpec, where: str) -> str:
    if value is None:
        raise ValueError(f"task {spec.name!r}: column {column!r} in {where}, row {row}: empty value (None)")
    return value if isinstance(value, str) else str(value)


def check_llm_columns(spec: TaskSpec, available: list[str], where: str) -> None:
    """Raise when a column the spec names is missing, saying which key names it.

    Raises:
        ValueError: names the task, the key (`prompt_template`, `target_column`, `choices`,
            `label_column`), the missing columns and the available ones.
    """
    roles: list[tuple[str, list[str]]] = [("prompt_template", template_fields(spec.prompt_template or "", where))]
    if spec.target_column:
        roles.append(("target_column", [spec.target_column]))
    if spec.choices:
        roles.append(("choices", list(spec.choices)))
    if spec.uses_label:
        roles.append(("label_column", [spec.label_column]))
    for key, columns in roles:
        missing = [c for c in columns if c not in available]
        if missing:
            raise ValueError(
                f"task {spec.name!r}: `{key}` names column(s) {missing} not found in {where}; "
                f"available columns: {available}"
            )


def canonicalize_llm(spec: TaskSpec, table: Any, where: str) -> datasets.Dataset:
    """Render the prompts and collect targets/choices and labels of one source split.

    Args:
        spec: an `instruction`, `multiple_choice` or `generation` task.
        table: the split's columns (a mapping of lists) or a `datasets.Dataset`.
        where: the file(s) the split comes from, for error messages.

    Raises:
        ValueError: a missing column (naming the key that names it), an empty value, a bad label.
    """
    available = _column_names(table)
    check_llm_columns(spec, available, where)
    fields = template_fields(spec.prompt_template or "", where)
    columns = {c: list(table[c]) for c in fields}
    n = len(table[available[0]]) if available else 0
    prompts = []
    for i in range(n):
        values = {c: _as_text(columns[c][i], c, i, spec, where) for c in fields}
        prompts.append(spec.prompt_template.format_map(values))
    labels = map_labels(table[spec.label_column], spec, where) if spec.uses_label else np.zeros(n, dtype=np.int64)
    data: dict[str, Any] = {"prompt": prompts}
    features: dict[str, Any] = {"prompt": datasets.Value("string")}
    if spec.kind == "multiple_choice":
        if spec.choices:
            per_column = [list(table[c]) for c in spec.choices]
            data["choices"] = [[_as_text(col[i], c, i, spec, where) for c, col in zip(spec.choices, per_column)]
                               for i in range(n)]
        else:
            data["choices"] = [list(spec.targets)] * n
        features["choices"] = datasets.Sequence(datasets.Value("string"))
    else:
        if spec.target_column:
            data["target"] = [_as_text(v, spec.target_column, i, spec, where)
                              for i, v in enumerate(table[spec.target_column])]
        else:
            data["target"] = [spec.targets[i] for i in labels]
        features["target"] = datasets.Value("string")
    data["label"] = labels
    features["label"] = datasets.Value("int64")
    return datasets.Dataset.from_dict(data, features=datasets.Features(features))
