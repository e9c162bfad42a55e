"""The recipe: one YAML file that describes a whole fit -> merge -> test -> report run.

A recipe is read with OmegaConf (so `${...}` interpolations work), overrides are deep-merged on top
(`--set key=value` dotlists and override files), and the result is checked into the dataclasses
of `recipe_schema`, with errors that name the recipe file and the offending key before anything
runs.
"""

from __future__ import annotations

import copy
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from neuroflow.pipeline.recipe_schema import (  # noqa: F401  (the recipe's public names live here too)
    SPLITS,
    Baselines,
    Evaluation,
    MergeRun,
    MultiTask,
    Recipe,
    RecipeError,
    Slurm,
    Statistics,
    Training,
    build,
)

_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


def _normalize_tasks(raw: Any, where: str) -> dict[str, dict[str, Any]]:
    """Accept `[sst2, {name: x, ...}]` or `{sst2: {}, x: {...}}`; return the mapping form."""
    if raw is None:
        raise RecipeError(f"{where}: `tasks` is required (a list of task names or a mapping)")
    out: dict[str, dict[str, Any]] = {}
    items: list[tuple[str, Any]]
    if isinstance(raw, list):
        items = []
        for i, item in enumerate(raw):
            if isinstance(item, str):
                items.append((item, {}))
            elif isinstance(item, dict) and isinstance(item.get("name"), str):
                body = dict(item)
                items.append((body.pop("name"), body))
            else:
                raise RecipeError(f"{where}: tasks[{i}] must be a task name or a mapping with `name`")
    elif isinstance(raw, dict):
        items = [(str(k), v) for k, v in raw.items()]
    else:
        raise RecipeError(f"{where}: `tasks` must be a list or a mapping, got {type(raw).__name__}")
    for name, body in items:
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise RecipeError(f"{where}: tasks.{name} must be a mapping of TaskSpec fields")
        if not _NAME_RE.match(name):
            raise RecipeError(f"{where}: task name {name!r} may only hold letters, digits and `_.-`")
        if name in out:
            raise RecipeError(f"{where}: task {name!r} is listed twice")
        body = dict(body)
        body.pop("name", None)
        out[name] = body
    if not out:
        raise RecipeError(f"{where}: `tasks` is empty")
    return out


def _check(recipe: Recipe) -> None:
    where = recipe.source_path or "<recipe>"
    if not _NAME_RE.match(recipe.name):
        raise RecipeError(f"{where}: name {recipe.name!r} may only hold letters, digits and `_.-`")
    for split, cap in recipe.caps.items():
        if split not in SPLITS:
            raise RecipeError(f"{where}: caps.{split}: unknown split (use {list(SPLITS)})")
        if not isinstance(cap, int) or cap <= 0:
            raise RecipeError(f"{where}: caps.{split} must be a positive integer, got {cap!r}")
    literal_checks = [
        ("family", recipe.family, ("auto", "encoder", "seq2seq", "vision")),
        ("launcher", recipe.launcher, ("inprocess", "subprocess")),
        ("training.mode", recipe.training.mode, ("full", "lora")),
        ("training.save_format", recipe.training.save_format, ("task_vector", "weights")),
    ]
    for key, value, allowed in literal_checks:
        if value not in allowed:
            raise RecipeError(f"{where}: {key}={value!r}; choose one of {list(allowed)}")
    if recipe.training.mode == "lora" and not recipe.training.lora:
        raise RecipeError(f"{where}: training.mode is `lora` but training.lora (LoraConfig kwargs) is empty")
    if not isinstance(recipe.task_training, dict):
        raise RecipeError(f"{where}: task_training must be a mapping of task name -> training overrides")
    for task, overlay in recipe.task_training.items():
        if task not in recipe.tasks:
            raise RecipeError(f"{where}: task_training.{task}: not a task of this recipe ({recipe.task_names})")
        if not isinstance(overlay, dict):
            raise RecipeError(f"{where}: task_training.{task} must be a mapping of `training` keys")
        for key in ("mode", "save_format"):
            # One experts collection holds one kind of expert, so these stay the recipe's.
            if key in overlay and overlay[key] != getattr(recipe.training, key):
                raise RecipeError(
                    f"{where}: task_training.{task}.{key}={overlay[key]!r} differs from training.{key}="
                    f"{getattr(recipe.training, key)!r}; every expert of a recipe shares it"
                )
        recipe.expert_training(task)  # unknown keys are named with their task
    seen: set[str] = set()
    reserved = {"pretrained", "individual", "multitask"}
    for i, run in enumerate(recipe.merges):
        if not _NAME_RE.match(run.name):
            raise RecipeError(f"{where}: merges[{i}].name {run.name!r} may only hold letters, digits and `_.-`")
        if run.name in seen or run.name in reserved:
            raise RecipeError(f"{where}: merges[{i}].name {run.name!r} is used twice or reserved ({sorted(reserved)})")
        seen.add(run.name)
        if not isinstance(run.method, dict) or "class_path" not in run.method:
            raise RecipeError(f"{where}: merges[{i}] ({run.name}).method needs a `class_path`")
        for param, grid in (run.search or {}).items():
            if not isinstance(grid, list) or not grid:
                raise RecipeError(f"{where}: merges[{i}] ({run.name}).search.{param} must be a non-empty list")


def _load_with_bases(path: Path, chain: list[Path]) -> Any:
    """Load a recipe file, first loading the recipe it `extends` (a path relative to it)."""
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}" + (f" (extended by {chain[-1]})" if chain else ""))
    if path.resolve() in chain:
        raise RecipeError(f"{path}: `extends` loops through {[str(p) for p in chain]}")
    where = str(path)
    try:
        conf = OmegaConf.load(path)
    except Exception as err:  # yaml errors carry the line number
        raise RecipeError(f"{where}: cannot parse YAML: {err}") from err
    if not OmegaConf.is_dict(conf):
        raise RecipeError(f"{where}: a recipe is a mapping at top level")
    raw = OmegaConf.to_container(conf, resolve=False)
    if "tasks" in raw:
        # Tasks become a mapping before any merge so that `tasks.<name>.<field>=...` addresses them.
        conf.tasks = _normalize_tasks(raw["tasks"], where)
    base_ref = raw.get("extends")
    if not base_ref:
        return conf
    base = _load_with_bases((path.parent / str(base_ref)), [*chain, path.resolve()])
    if "tasks" in raw:
        base.tasks = {}  # a recipe's own task list replaces its base's, it does not add to it
        if OmegaConf.is_dict(base.get("task_training")):
            # The base's per-task budgets go with the base's tasks: those the new list drops go too.
            kept = set(conf.tasks.keys())
            base.task_training = {k: v for k, v in base.task_training.items() if k in kept}
    if "merges" in raw:
        base.merges = []
    merged = OmegaConf.merge(base, conf)
    merged.pop("extends")
    return merged


def load_recipe(
    path: str | Path,
    overrides: list[str] | None = None,
    override_files: list[str | Path] | None = None,
    tasks: list[str] | None = None,
) -> Recipe:
    """Read, override and check a recipe.

    A recipe may start from another one with `extends: <path relative to it>`: its keys are
    deep-merged over the base's, except `tasks` and `merges`, which replace the base's lists (a
    base's `task_training` entries for tasks the new list drops are dropped with them).

    Args:
        path: the recipe YAML.
        overrides: dotlist overrides applied last, e.g. `["backbone=/models/tiny", "caps.train=64",
            "tasks.paws.source.path=csv"]`.
        override_files: YAML files deep-merged over the recipe in order (before `overrides`); the
            way to substitute local sources for hub datasets, or a small model for a big one.
        tasks: run only these of the recipe's tasks (in this order); None = all.

    Raises:
        RecipeError: a missing file, an unknown key, a wrong type or value; the message names it.
    """
    path = Path(path)
    where = str(path)
    conf = _load_with_bases(path, [])
    layers = [conf]
    for extra in override_files or []:
        extra = Path(extra)
        if not extra.is_file():
            raise RecipeError(f"override file not found: {extra}")
        layer = OmegaConf.load(extra)
        if "tasks" in layer:
            layer.tasks = _normalize_tasks(OmegaConf.to_container(layer.tasks), str(extra))
        layers.append(layer)
    bad = [o for o in overrides or [] if "=" not in o]
    if bad:
        raise RecipeError(f"override(s) {bad} must look like key=value")
    try:
        merged = OmegaConf.merge(*layers)
        for item in overrides or []:
            # `update` (unlike a dotlist merge) also addresses list items: `merges.0.method.init_args.scaling=1`.
            key, value = item.split("=", 1)
            OmegaConf.update(merged, key.strip(), yaml.safe_load(value) if value.strip() else None, merge=True)
        data = OmegaConf.to_container(merged, resolve=True)
    except Exception as err:
        raise RecipeError(f"{where}: cannot apply overrides/interpolations: {err}") from err
    for key in ("name", "backbone"):
        if not data.get(key):
            raise RecipeError(f"{where}: `{key}` is required")
    data["tasks"] = _normalize_tasks(data.get("tasks"), where)
    if tasks:
        unknown = [t for t in tasks if t not in data["tasks"]]
        if unknown:
            raise RecipeError(f"{where}: --tasks {unknown} not in the recipe's tasks {list(data['tasks'])}")
        data["tasks"] = {t: data["tasks"][t] for t in tasks}
        if isinstance(data.get("task_training"), dict):
            data["task_training"] = {t: v for t, v in data["task_training"].items() if t in tasks}
    merges = data.pop("merges", None) or []
    if not isinstance(merges, list):
        raise RecipeError(f"{where}: `merges` must be a list")
    data.pop("source_path", None)
    recipe = build(Recipe, data, "", where)
    recipe.merges = [build(MergeRun, m, f"merges[{i}]", where) for i, m in enumerate(merges)]
    recipe.source_path = where
    if not recipe.output_dir:
        recipe.output_dir = f"runs/{recipe.name}"
    _check(recipe)
    return recipe


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """The resolved recipe as plain data (saved next to the results for reproducibility)."""
    return copy.deepcopy(asdict(recipe))
