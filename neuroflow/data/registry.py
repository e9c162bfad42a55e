"""Finding task specs by name: built-in YAMLs in `neuroflow/data/tasks/`, plus user directories."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from neuroflow.data.task_spec import TaskSpec

BUILTIN_TASK_DIR = Path(__file__).parent / "tasks"
_YAML_SUFFIXES = (".yaml", ".yml")


def _search_dirs(task_dirs: Iterable[str | os.PathLike] | None) -> list[Path]:
    # User directories come first, so a user can shadow a built-in task with their own version.
    dirs = [Path(d).expanduser() for d in (task_dirs or [])]
    for d in dirs:
        if not d.is_dir():
            raise ValueError(f"task_dirs: {str(d)!r} is not a directory")
    return [*dirs, BUILTIN_TASK_DIR]


def _task_files(directory: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(directory.iterdir()) if p.suffix in _YAML_SUFFIXES}


def known_tasks(task_dirs: Iterable[str | os.PathLike] | None = None) -> list[str]:
    """Names of every task that `resolve_task` can find, sorted.

    Args:
        task_dirs: extra directories of task YAML files, searched before the built-ins.
    """
    names: set[str] = set()
    for d in _search_dirs(task_dirs):
        names.update(_task_files(d))
    return sorted(names)


def load_task_file(path: str | os.PathLike) -> TaskSpec:
    """Read one task YAML file.

    Args:
        path: the `.yaml` file.

    Raises:
        ValueError: unreadable YAML or an invalid spec, naming the file.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"task file {str(path)!r}: cannot read it: {err}") from err
    spec = TaskSpec.from_dict(data, origin=f"task file {str(path)!r}")
    return spec


def resolve_task(
    name_or_spec: str | TaskSpec | dict[str, Any],
    task_dirs: Iterable[str | os.PathLike] | None = None,
) -> TaskSpec:
    """Turn a task reference into a validated `TaskSpec`.

    Args:
        name_or_spec: a task name (looked up as `<name>.yaml` in `task_dirs`, then in the
            built-ins), a path to a task YAML file, a `TaskSpec`, or a dict of its fields.
        task_dirs: extra directories of task YAML files, searched before the built-ins.

    Raises:
        ValueError: an unknown name (the message lists the known tasks) or an invalid spec.
    """
    if isinstance(name_or_spec, TaskSpec):
        name_or_spec.validate()
        return name_or_spec
    if isinstance(name_or_spec, dict):
        return TaskSpec.from_dict(dict(name_or_spec), origin=f"task {name_or_spec.get('name', '?')!r}")
    if not isinstance(name_or_spec, str):
        raise ValueError(f"task reference must be a name, a YAML path or a TaskSpec, got {name_or_spec!r}")
    ref = name_or_spec
    if ref.endswith(_YAML_SUFFIXES):
        if not Path(ref).is_file():
            raise ValueError(f"task file {ref!r} does not exist")
        return load_task_file(ref)
    for d in _search_dirs(task_dirs):
        path = _task_files(d).get(ref)
        if path is not None:
            spec = load_task_file(path)
            if spec.name != ref:
                raise ValueError(f"task file {str(path)!r}: `name` is {spec.name!r} but the file is named {ref!r}")
            return spec
    raise ValueError(
        f"unknown task {ref!r}; known tasks: {', '.join(known_tasks(task_dirs))} "
        f"(add a <name>.yaml to a directory passed as `task_dirs`)"
    )
