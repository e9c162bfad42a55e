"""The recipe: one YAML file that describes a whole fit -> merge -> test -> report run.

A recipe is read with OmegaConf (so `${...}` interpolations work), overrides are deep-merged on top
(`--set key=value` dotlists and override files), and the result is checked into the dataclasses
below, with errors that name the recipe file and the offending key before anything runs.
"""

from __future__ import annotations

import copy
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml
from omegaconf import OmegaConf

SPLITS = ("train", "validation", "test")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


class RecipeError(ValueError):
    """A recipe that cannot run, with the file and key at fault in the message."""


@dataclass
class Training:
    """How one fit is run (the experts, or the jointly trained multi-task model).

    Args:
        mode: `full` fine-tuning or `lora` (peft adapters; the experts dir then holds adapters).
        lora: LoraConfig keyword arguments (r, lora_alpha, target_modules, ...) when mode is `lora`.
        max_epochs: passes over each task's (capped) training split.
        max_steps: stop after this many optimizer steps (-1: no limit).
        save_format: what the collector stores for a full fine-tune: `task_vector` or `weights`.
        model: extra `MultiTaskModule` init_args (optimizer, scheduler, pooling, ...).
        data: extra `MultiTaskDataModule` init_args (batch_size, max_length, sampling, ...).
        trainer: extra Trainer arguments (precision, accelerator, devices, ...).
    """

    mode: Literal["full", "lora"] = "full"
    lora: dict[str, Any] | None = None
    max_epochs: int = 1
    max_steps: int = -1
    save_format: Literal["task_vector", "weights"] = "task_vector"
    model: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    trainer: dict[str, Any] = field(default_factory=dict)


@dataclass
class MultiTask:
    """The jointly trained multi-task model, a comparison row (one fit over every task).

    Args:
        enabled: train and test it.
        training: its fit settings; unset fields fall back to the experts' `training`.
    """

    enabled: bool = False
    training: dict[str, Any] = field(default_factory=dict)


@dataclass
class MergeRun:
    """One merged model: a method, its hyperparameters and optionally a validation search.

    Args:
        name: row name in the report and output folder name (letters, digits, `_.-`).
        method: `{class_path: neuroflow.merging.<Method>, init_args: {...}}`.
        search: grid of init_args to try on the validation splits (`{scaling: [0.3, 0.5]}`);
            the best candidate by average normalized validation score is tested.
        merge: extra `MergeModule` init_args.
    """

    name: str
    method: dict[str, Any]
    search: dict[str, list[Any]] | None = None
    merge: dict[str, Any] = field(default_factory=dict)


@dataclass
class Baselines:
    """Reference rows.

    Args:
        pretrained: the pre-trained backbone with each expert's head.
        individual: each expert on its own task (the normalization reference).
    """

    pretrained: bool = True
    individual: bool = True


@dataclass
class Evaluation:
    """Settings shared by every merge/test run.

    Args:
        data: extra `MultiTaskDataModule` init_args for evaluation (eval_batch_size, ...).
        trainer: extra Trainer arguments for evaluation.
    """

    data: dict[str, Any] = field(default_factory=dict)
    trainer: dict[str, Any] = field(default_factory=dict)


@dataclass
class Slurm:
    """What the rendered SLURM scripts ask the scheduler for.

    Args:
        partition: the partition (`#SBATCH --partition`); empty to leave it out.
        account: the account to charge; empty to leave it out.
        nodes: nodes per job (`--trainer.num_nodes`).
        gpus_per_node: GPUs per node; one task per GPU (`--ntasks-per-node`, `--trainer.devices`).
        cpus_per_task: CPU cores per GPU process (data loading).
        mem: memory per node, e.g. `64G`.
        fit_time: wall-time limit of each fit job, `HH:MM:SS`.
        merge_time: wall-time limit of the merge + test job.
        setup: shell lines run before the commands (module loads, `source .venv/bin/activate`).
        extra_sbatch: additional `#SBATCH` options, e.g. `["--constraint=a100"]`.
        workdir: folder the jobs `cd` into (relative paths of the recipe are taken from there);
            empty: the folder the scripts were rendered from.
    """

    partition: str = ""
    account: str = ""
    nodes: int = 1
    gpus_per_node: int = 1
    cpus_per_task: int = 8
    mem: str = "64G"
    fit_time: str = "04:00:00"
    merge_time: str = "04:00:00"
    setup: list[str] = field(default_factory=list)
    extra_sbatch: list[str] = field(default_factory=list)
    workdir: str = ""


@dataclass
class Recipe:
    """A whole experiment.

    Args:
        name: the experiment's name (output folder, report title).
        backbone: pre-trained model: local folder, hub id, or `pkg://<module>`.
        family: backbone family for `MultiTaskModule` (`auto`, `encoder`, `seq2seq`, `vision`).
        tasks: task name -> fields. A name of a built-in task with `{}` (or overrides of some of
            its fields, e.g. `source`); a new task with a complete TaskSpec (`kind`, `source`, ...).
        caps: default `max_examples` per split for every task (a task's own caps win).
        seed: seed of every fit and of the seeded splits.
        output_dir: where everything goes (experts, merged models, configs, reports).
        experts_dir: the experts collection (default `<output_dir>/experts`); point several recipes
            at one collection to share experts (experts already in it are not retrained).
        data_dir: root for the tasks' relative data files (default: neuroflow's data dir).
        task_dirs: extra folders of task YAMLs.
        training: how each expert is fine-tuned.
        multitask: the jointly trained comparison model.
        baselines: reference rows (pre-trained backbone, individual experts).
        merges: the merged models to build and score.
        evaluation: settings shared by the merge and test runs.
        launcher: run each stage `inprocess` (fast, one Python) or as a `subprocess`.
        slurm: scheduler settings for `--slurm-out`.
        source_path: the recipe file (filled by `load_recipe`).
    """

    name: str
    backbone: str
    tasks: dict[str, dict[str, Any]]
    family: Literal["auto", "encoder", "seq2seq", "vision"] = "auto"
    caps: dict[str, int] = field(default_factory=dict)
    seed: int = 42
    output_dir: str = ""
    experts_dir: str = ""
    data_dir: str | None = None
    task_dirs: list[str] = field(default_factory=list)
    training: Training = field(default_factory=Training)
    multitask: MultiTask = field(default_factory=MultiTask)
    baselines: Baselines = field(default_factory=Baselines)
    merges: list[MergeRun] = field(default_factory=list)
    evaluation: Evaluation = field(default_factory=Evaluation)
    launcher: Literal["inprocess", "subprocess"] = "inprocess"
    slurm: Slurm = field(default_factory=Slurm)
    source_path: str = ""

    @property
    def task_names(self) -> list[str]:
        return list(self.tasks)

    def multitask_training(self) -> Training:
        """The experts' training settings overlaid with `multitask.training`."""
        merged = OmegaConf.merge(OmegaConf.create(asdict(self.training)), OmegaConf.create(self.multitask.training))
        return _build(Training, OmegaConf.to_container(merged), "multitask.training", self.source_path)


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


def _build(cls: type, raw: Any, key: str, where: str) -> Any:
    """Instantiate a recipe dataclass from a plain mapping, naming unknown or missing keys."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(f"{where}: `{key}` must be a mapping, got {type(raw).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise RecipeError(
            f"{where}: unknown key(s) {unknown} under `{key or '<top level>'}`; known: {sorted(known)}"
        )
    kwargs = {}
    for name, value in raw.items():
        sub = {
            "training": Training, "multitask": MultiTask, "baselines": Baselines,
            "evaluation": Evaluation, "slurm": Slurm,
        }.get(name) if cls is Recipe else None
        path = f"{key}.{name}" if key else name
        kwargs[name] = _build(sub, value, path, where) if sub else value
    try:
        obj = cls(**kwargs)
    except TypeError as err:
        raise RecipeError(f"{where}: `{key or '<top level>'}`: {err}") from err
    return obj


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
    deep-merged over the base's, except `tasks` and `merges`, which replace the base's lists.

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
    merges = data.pop("merges", None) or []
    if not isinstance(merges, list):
        raise RecipeError(f"{where}: `merges` must be a list")
    data.pop("source_path", None)
    recipe = _build(Recipe, data, "", where)
    recipe.merges = [_build(MergeRun, m, f"merges[{i}]", where) for i, m in enumerate(merges)]
    recipe.source_path = where
    if not recipe.output_dir:
        recipe.output_dir = f"runs/{recipe.name}"
    _check(recipe)
    return recipe


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """The resolved recipe as plain data (saved next to the results for reproducibility)."""
    return copy.deepcopy(asdict(recipe))
