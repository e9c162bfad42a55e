"""The recipe's schema: the dataclasses a recipe YAML is checked into, and the builder that
names unknown or missing keys (with the nearest known key when one is close)."""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from omegaconf import OmegaConf

SPLITS = ("train", "validation", "test")


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
        early_stopping: stop a fit when the validation primary metric has not improved for
            `patience` validations (`{patience: 3, min_delta: 0.0}`: Lightning's `EarlyStopping`
            keyword arguments; monitor and mode are the fit's). The collector keeps the best
            checkpoint, not the last. None = train for `max_epochs`/`max_steps`.
    """

    mode: Literal["full", "lora"] = "full"
    lora: dict[str, Any] | None = None
    max_epochs: int = 1
    max_steps: int = -1
    save_format: Literal["task_vector", "weights"] = "task_vector"
    model: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    trainer: dict[str, Any] = field(default_factory=dict)
    early_stopping: dict[str, Any] | None = None


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
class Statistics:
    """The statistics pass of the data-aware merges (RegMean's Gram matrices, Fishers): one
    `python -m neuroflow stats` stage per expert (`stats_<task>`), run after the fits and before
    the merges, over that expert's own training data as its fit read it (its caps and data
    settings). Planned only when a kind is needed: listed here, or read by a merge's method.

    Args:
        kinds: the statistics to compute (`regmean`, `fisher`); empty = those the recipe's merge
            methods read.
        max_batches: training batches per expert (null: its whole capped training split).
        fisher_labels: `sample` (one label drawn from the expert's softmax per example) or
            `expected` (every class weighted by its probability; one backward pass per class).
        seed: seed of the Fisher's label draws.
        threads: torch CPU threads during the pass (null: torch's; 1 is fastest on a busy CPU).
        accelerator: Lightning accelerator of the pass (one device).
    """

    kinds: list[str] = field(default_factory=list)
    max_batches: int | None = 32
    fisher_labels: Literal["sample", "expected"] = "sample"
    seed: int = 0
    threads: int | None = None
    accelerator: str = "auto"


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
        task_training: per-task overlay of `training` for that task's expert (same keys, deep-merged),
            e.g. `{cola: {max_epochs: 8, early_stopping: {patience: 2}}}` for a task that needs a
            longer fit to reach its plateau; `mode` and `save_format` stay the recipe's.
        multitask: the jointly trained comparison model.
        baselines: reference rows (pre-trained backbone, individual experts).
        merges: the merged models to build and score.
        evaluation: settings shared by the merge and test runs.
        statistics: the statistics pass of the data-aware merges (RegMean, Fisher merging).
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
    task_training: dict[str, dict[str, Any]] = field(default_factory=dict)
    multitask: MultiTask = field(default_factory=MultiTask)
    baselines: Baselines = field(default_factory=Baselines)
    merges: list[MergeRun] = field(default_factory=list)
    evaluation: Evaluation = field(default_factory=Evaluation)
    statistics: Statistics = field(default_factory=Statistics)
    launcher: Literal["inprocess", "subprocess"] = "inprocess"
    slurm: Slurm = field(default_factory=Slurm)
    source_path: str = ""

    @property
    def task_names(self) -> list[str]:
        return list(self.tasks)

    def expert_training(self, task: str) -> Training:
        """The training settings of `task`'s expert: `training` overlaid with `task_training[task]`."""
        overlay = self.task_training.get(task)
        if not overlay:
            return self.training
        merged = OmegaConf.merge(OmegaConf.create(asdict(self.training)), OmegaConf.create(overlay))
        return build(Training, OmegaConf.to_container(merged), f"task_training.{task}", self.source_path)

    def multitask_training(self) -> Training:
        """The experts' training settings overlaid with `multitask.training`."""
        merged = OmegaConf.merge(OmegaConf.create(asdict(self.training)), OmegaConf.create(self.multitask.training))
        return build(Training, OmegaConf.to_container(merged), "multitask.training", self.source_path)


def build(cls: type, raw: Any, key: str, where: str) -> Any:
    """Instantiate a recipe dataclass from a plain mapping, naming unknown or missing keys."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(f"{where}: `{key}` must be a mapping, got {type(raw).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        near = {k: difflib.get_close_matches(k, list(known), n=1, cutoff=0.6) for k in unknown}
        hint = "".join(f"; did you mean {m[0]!r} for {k!r}?" for k, m in near.items() if m)
        raise RecipeError(
            f"{where}: unknown key(s) {unknown} under `{key or '<top level>'}`{hint}; known: {sorted(known)}"
        )
    kwargs = {}
    for name, value in raw.items():
        sub = {
            "training": Training, "multitask": MultiTask, "baselines": Baselines,
            "evaluation": Evaluation, "slurm": Slurm, "statistics": Statistics,
        }.get(name) if cls is Recipe else None
        path = f"{key}.{name}" if key else name
        kwargs[name] = build(sub, value, path, where) if sub else value
    try:
        obj = cls(**kwargs)
    except TypeError as err:
        raise RecipeError(f"{where}: `{key or '<top level>'}`: {err}") from err
    return obj
