"""Class paths (`package.module.Name`), as configs name classes: one resolver for every place that
turns a config's `class_path` into a class (merge methods, data modules, readers, scorers, the
planner's statistics lookup), so that they all accept the same forms and fail the same way."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any


def import_path(path: str, default_module: str | None = None) -> object | None:
    """The object at a dotted import path, or None when it does not import.

    Args:
        path: `package.module.Name`; a bare `Name` is looked up in `default_module`.
        default_module: where a bare name lives (None: a bare name does not resolve).
    """
    module, _, name = str(path).rpartition(".")
    module = module or default_module or ""
    if not module or not name:
        return None
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def resolve_class(path: str, base: type, default_module: str | None = None, what: str = "class_path") -> type:
    """The subclass of `base` named by `path`.

    Args:
        path: the class path, as a config gives it.
        base: the class it must subclass.
        default_module: where a bare class name is looked up.
        what: how an error names the setting (e.g. "RegMean fallback").

    Raises:
        ValueError: the path does not import, or names something that is not a `base` subclass.
    """
    cls = import_path(path, default_module)
    if cls is None:
        raise ValueError(f"{what}: {path!r} does not import")
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ValueError(f"{what}: {path!r} is not a {base.__module__}.{base.__qualname__} subclass")
    return cls


def is_class_config(value: Any) -> bool:
    """Whether `value` is a `{"class_path": ..., "init_args": {...}}` config."""
    return isinstance(value, Mapping) and isinstance(value.get("class_path"), str)


def instantiate(config: Mapping[str, Any], base: type, default_module: str | None = None, what: str = "class_path") -> Any:
    """`cls(**init_args)` for a `{"class_path", "init_args"}` config whose class subclasses `base`.

    Args:
        config: the config mapping.
        base: the class the instance's class must subclass.
        default_module: where a bare class name is looked up.
        what: how an error names the setting.

    Raises:
        ValueError: see `resolve_class`.
    """
    cls = resolve_class(config["class_path"], base, default_module, what)
    return cls(**dict(config.get("init_args") or {}))
