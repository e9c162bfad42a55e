"""Loading a task: read its source, check and normalize columns, map labels, make splits, cap.

The result of `load_task` is a `datasets.DatasetDict` with our three splits (`train`,
`validation`, `test`) and canonical columns: `text` (+ `text_pair`) or `image`, and `label` (an
index of `label_names`); causal-LM kinds get `prompt` and `target` or `choices` instead of the
text columns (`neuroflow.data.prompts`). Everything downstream (tokenization, collation) reads only these.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from neuroflow.data.labels import map_labels
from neuroflow.data.prompts import canonicalize_llm
from neuroflow.data.readers import build_reader, find_reader
from neuroflow.data.readers.base import Columns, is_local_path
from neuroflow.data.splits import cap_indices, carve_splits
from neuroflow.data.task_spec import SPLITS, TaskSpec
from neuroflow.hub import default_data_dir

# `datasets` builders that read local files: their data_files are resolved against data_dir.
LOCAL_BUILDERS = frozenset({"csv", "json", "text", "parquet", "arrow", "pandas", "imagefolder", "webdataset"})
_GLOB_CHARS = frozenset("*?[")


def resolve_data_files(spec: TaskSpec, data_dir: Path, check: bool = True) -> Any:
    """`source.data_files` with every relative path joined to `data_dir`.

    A single path (or list) means the split `train`, as in `datasets.load_dataset`.

    Raises:
        ValueError: a file that does not exist (unless `check` is off), naming the task, the
            path as written and where it was looked for.
    """
    raw = spec.source.get("data_files")
    if raw is None:
        return None
    if isinstance(raw, (str, os.PathLike, list)):
        raw = {"train": raw}
    if not isinstance(raw, Mapping):
        raise ValueError(f"task {spec.name!r}: source.data_files must be a path or a mapping split -> path(s)")

    def one(path: Any) -> Any:
        if isinstance(path, Mapping):
            return {role: one(p) for role, p in path.items()}
        if isinstance(path, list):
            return [one(p) for p in path]
        if not isinstance(path, (str, os.PathLike)) or not is_local_path(path):
            return path
        full = Path(path).expanduser()
        full = full if full.is_absolute() else data_dir / full
        if check and not (_GLOB_CHARS & set(str(path))) and not full.exists():
            raise ValueError(
                f"task {spec.name!r}: data file {str(path)!r} not found (looked for {str(full)!r}; "
                f"data_dir is {str(data_dir)!r}, set it with --data.data_dir or $NEUROFLOW_DATA_DIR)"
            )
        return full

    return {split: one(p) for split, p in raw.items()}


def _describe(files: Any) -> str:
    if isinstance(files, Mapping):
        return ", ".join(_describe(f) for f in files.values())
    if isinstance(files, list):
        return ", ".join(_describe(f) for f in files)
    return repr(str(files))


def read_source(
    spec: TaskSpec, data_dir: Path, cache_dir: str | None = None
) -> dict[str, tuple[Columns | datasets.Dataset, str]]:
    """Source split name -> (its columns or `datasets.Dataset`, a description for errors)."""
    options = {k: v for k, v in spec.source.items() if k not in ("path", "data_files")}
    path = str(spec.source["path"])
    reader_cls = find_reader(path)
    if reader_cls is not None:
        files = resolve_data_files(spec, data_dir)
        if not files:
            raise ValueError(f"task {spec.name!r}: reader {path!r} needs source.data_files")
        reader = build_reader(reader_cls, options, spec.name)
        return {split: (reader.read_split(f, spec.name), _describe(f)) for split, f in files.items()}

    local = path in LOCAL_BUILDERS
    files = resolve_data_files(spec, data_dir) if local else spec.source.get("data_files")
    if local and not files:
        raise ValueError(f"task {spec.name!r}: the {path!r} builder needs source.data_files")
    if local and isinstance(files, Mapping):
        files = {s: [str(p) for p in v] if isinstance(v, list) else str(v) for s, v in files.items()}
    try:
        loaded = datasets.load_dataset(path, data_files=files, cache_dir=cache_dir, **options)
    except Exception as err:  # hub/builder errors come in many types; name the task and source
        raise ValueError(f"task {spec.name!r}: datasets.load_dataset({path!r}) failed: {err}") from err
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({"train": loaded})
    where = {s: (_describe(files[s]) if local and s in files else f"{path!r} split {s!r}") for s in loaded}
    return {split: (ds, where[split]) for split, ds in loaded.items()}


def _column_names(table: Columns | datasets.Dataset) -> list[str]:
    return list(table.column_names if isinstance(table, datasets.Dataset) else table.keys())


def _text(values: Any, column: str, spec: TaskSpec, where: str) -> list[str]:
    values = list(values)
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise ValueError(
                f"task {spec.name!r}: column {column!r} in {where}, row {i}: expected text, got {v!r}"
            )
    return values


def canonicalize(spec: TaskSpec, table: Columns | datasets.Dataset, where: str) -> datasets.Dataset:
    """Select the task's columns under canonical names and map its labels to indices.

    Raises:
        ValueError: a missing column (with the available ones), non-text input or a bad label.
    """
    if spec.is_llm:
        return canonicalize_llm(spec, table, where)
    available = _column_names(table)
    needed = [*spec.text_columns, spec.label_column]
    needed += [c for c in (spec.text_pair_column, spec.image_column) if c]
    missing = [c for c in needed if c not in available]
    if missing:
        raise ValueError(
            f"task {spec.name!r}: column(s) {missing} not found in {where}; available columns: {available}"
        )
    labels = map_labels(table[spec.label_column], spec, where)
    label_feature = datasets.Value("int64")

    if spec.kind == "image_classification":
        image = table[spec.image_column]
        if isinstance(table, datasets.Dataset):
            # Keep the source's image feature (e.g. PIL-decoded `Image`); collation converts it.
            ds = table.select_columns([spec.image_column]).rename_column(spec.image_column, "image")
            return ds.add_column("label", labels.tolist(), feature=label_feature)
        image = np.asarray(image, dtype=np.float32)
        features = datasets.Features(
            {"image": datasets.Array2D(tuple(image.shape[1:]), "float32"), "label": label_feature}
        )
        return datasets.Dataset.from_dict({"image": image, "label": labels}, features=features)

    columns = [_text(table[c], c, spec, where) for c in spec.text_columns]
    data: dict[str, Any] = {"text": [" ".join(parts) for parts in zip(*columns)] if len(columns) > 1 else columns[0]}
    if spec.text_pair_column:
        data["text_pair"] = _text(table[spec.text_pair_column], spec.text_pair_column, spec, where)
    data["label"] = labels
    features = datasets.Features({k: datasets.Value("string") for k in data if k != "label"} | {"label": label_feature})
    return datasets.Dataset.from_dict(data, features=features)


def source_splits_for(spec: TaskSpec, ours: Sequence[str]) -> set[str]:
    """The source splits that our splits `ours` are read from (a carved split needs its pool)."""
    needed: set[str] = set()
    for split in ours:
        if split in spec.splits:
            needed.add(spec.splits[split])
        else:
            needed.add(spec.splits.get(spec.split_from, spec.split_from))
    return needed


def restrict_to_splits(spec: TaskSpec, ours: Sequence[str]) -> TaskSpec:
    """`spec` reading only the data files of the source splits `ours` need (an evaluation does not
    need the training file, unless its splits are carved from it)."""
    files = spec.source.get("data_files")
    if not isinstance(files, Mapping):
        return spec
    needed = source_splits_for(spec, ours)
    kept = {k: v for k, v in files.items() if k in needed}
    if kept == dict(files):
        return spec
    import dataclasses

    # Only the source changes: the splits (and their validation) stay those of the whole spec.
    return dataclasses.replace(spec, source={**spec.source, "data_files": kept})


def load_task(
    spec: TaskSpec,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | None = None,
    max_examples: Mapping[str, int | None] | None = None,
    splits: Sequence[str] | None = None,
) -> datasets.DatasetDict:
    """Load a task's `train`/`validation`/`test` splits with canonical columns.

    Missing splits are carved from `spec.split_from` (seeded by `spec.split_seed`, stratified),
    then each split is capped to a seeded stratified subset.

    Args:
        spec: the task.
        data_dir: base of relative data file paths (default `neuroflow.hub.default_data_dir()`).
        cache_dir: `datasets` cache for builder/hub sources (default: the `datasets` default).
        max_examples: caps per split overriding `spec.max_examples` (None entries keep the spec's).
        splits: only these of our splits (their files alone are read; the result holds just
            them, identical to the same splits of a full load); None = all three.

    Raises:
        ValueError: a missing file, split or column, or a bad label, naming the task.
    """
    data_dir = Path(data_dir if data_dir is not None else default_data_dir()).expanduser()
    wanted = list(splits) if splits is not None else list(SPLITS)
    # Only the files of the wanted splits are read; the bookkeeping below uses the whole spec,
    # so that carved splits come out exactly as in a full load.
    raw = read_source(restrict_to_splits(spec, wanted) if splits is not None else spec, data_dir, cache_dir)
    out: dict[str, datasets.Dataset] = {}
    for ours, theirs in spec.splits.items():
        if splits is not None and theirs not in source_splits_for(spec, wanted):
            continue
        if theirs not in raw:
            raise ValueError(
                f"task {spec.name!r}: source split {theirs!r} (our {ours!r}) not found; the source has "
                f"splits {sorted(raw)} (check `splits` and `source.data_files`)"
            )
        table, where = raw[theirs]
        out[ours] = canonicalize(spec, table, where)

    missing = spec.missing_splits()
    if missing and spec.split_from in out:
        pool = out[spec.split_from]
        fractions = {s: spec.split_fractions[s] for s in missing}
        rest, made = carve_splits(np.asarray(pool["label"]), fractions, spec.split_seed)
        for split, idx in made.items():
            out[split] = pool.select(idx)
        out[spec.split_from] = pool.select(rest)

    caps = dict(spec.max_examples)
    caps.update({k: v for k, v in (max_examples or {}).items() if v is not None})
    for split in wanted:
        if split not in out:
            raise ValueError(f"task {spec.name!r}: split {split!r} has no source (check `splits`)")
        idx = cap_indices(np.asarray(out[split]["label"]), caps.get(split), spec.split_seed)
        if idx is not None:
            out[split] = out[split].select(idx)
        if len(out[split]) == 0:
            raise ValueError(f"task {spec.name!r}: split {split!r} is empty")
    return datasets.DatasetDict({s: out[s] for s in wanted})
