"""From a recipe to the list of CLI runs (`fit`, `merge`, `test`) that carry it out.

Every stage is a complete LightningCLI config written to `<output_dir>/configs/<stage>.yaml`, so
each step of a pipeline can be rerun by hand (`python -m neuroflow fit --config ...`), on a laptop
or by the SLURM scripts, and nothing here re-implements training, merging or evaluation.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from neuroflow.class_paths import import_path, is_class_config
from neuroflow.callbacks import ExpertCollector
from neuroflow.data import MultiTaskDataModule
from neuroflow.evaluation import ExpertsModule, MergeModule, PretrainedModule
from neuroflow.evaluation.report_callback import ReportCallback
from neuroflow.models import MultiTaskModule
from neuroflow.pipeline.recipe import Recipe, RecipeError, Training


def class_path(cls: type) -> str:
    """The `class_path` a config names `cls` by: its public import path where it is re-exported
    by its package (`neuroflow.evaluation.MergeModule`), else its module's."""
    import importlib

    module = cls.__module__
    package = module.rsplit(".", 1)[0]
    if package != module and getattr(importlib.import_module(package), cls.__name__, None) is cls:
        module = package
    return f"{module}.{cls.__qualname__}"


# The classes a stage config instantiates (selected by class_path, as a user would). They are
# referenced as classes, so a rename is a refactor that fails at import, not at run time.
MODULE_CLASS = class_path(MultiTaskModule)
DATA_CLASS = class_path(MultiTaskDataModule)
COLLECTOR_CLASS = class_path(ExpertCollector)
CHECKPOINT_CLASS = class_path(ModelCheckpoint)
EARLY_STOPPING_CLASS = class_path(EarlyStopping)
CSV_LOGGER_CLASS = class_path(CSVLogger)
MERGE_CLASS = class_path(MergeModule)
PRETRAINED_CLASS = class_path(PretrainedModule)
EXPERTS_CLASS = class_path(ExpertsModule)
REPORT_CALLBACK_CLASS = class_path(ReportCallback)
MULTITASK_ROW = "multitask"
REFERENCE_ROW = "individual"


@dataclass
class Stage:
    """One CLI run of the pipeline.

    Args:
        name: unique id, also the config file's stem (`fit_sst2`, `merge_ties`, `test_pretrained`).
        command: the neuroflow subcommand (`fit`, `merge`, `test`).
        config: the complete config (what `--config` receives).
        kind: `expert`, `multitask`, `baseline`, `statistics` or `merge` (what the runner checks to skip it).
        task: the task an expert fit trains.
        row: the row this stage adds to the combined report.
        report_dir: where the stage's `report.json` lands.
        extra_args: CLI arguments after `--config` (e.g. `--ckpt_path`).
    """

    name: str
    command: str
    config: dict[str, Any]
    kind: str
    task: str | None = None
    row: str | None = None
    report_dir: Path | None = None
    extra_args: list[str] = field(default_factory=list)

    def config_hash(self) -> str:
        blob = json.dumps([self.command, self.config, self.extra_args], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _drop_nones(value: Any) -> Any:
    # In a recipe's task entry null means "no such key": an override removes a key that way (a hub
    # config name when a local csv replaces the hub dataset, a split the local files do not have).
    # Every optional TaskSpec field defaults to None, so dropping is the same as setting None.
    if isinstance(value, dict):
        return {k: _drop_nones(v) for k, v in value.items() if v is not None}
    return value


def resolve_task_specs(recipe: Recipe) -> dict[str, dict[str, Any]]:
    """Complete, validated TaskSpec dicts for every task of the recipe, in order.

    A task whose entry has `kind` or `label_names` is taken as a full spec; otherwise the entry
    (optionally with `task: <built-in name>`) overrides fields of the built-in task of that name.
    Caps: the built-in's, then the recipe's `caps`, then the entry's own `max_examples`.
    `num_labels: N` (recipe-only shorthand) stands for `label_names: ["0", ..., "N-1"]`.

    Raises:
        RecipeError: an unknown task or an invalid spec, naming the recipe and the task.
    """
    from neuroflow.data import TaskSpec, resolve_task

    where = recipe.source_path or "<recipe>"
    specs: dict[str, dict[str, Any]] = {}
    for name, entry in recipe.tasks.items():
        entry = _drop_nones(copy.deepcopy(entry))
        own_caps = entry.pop("max_examples", None) or {}
        num_labels = entry.pop("num_labels", None)
        if num_labels is not None and "label_names" not in entry:
            # Shorthand for datasets with hundreds of classes (SUN397, Cars): the names are the
            # class indices of the source's label column, in order.
            entry["label_names"] = [str(i) for i in range(int(num_labels))]
        try:
            if "kind" in entry or "label_names" in entry:
                data = {"name": name, **entry}
            else:
                builtin = resolve_task(entry.pop("task", name), task_dirs=recipe.task_dirs or None)
                data = builtin.to_dict()
                source = entry.pop("source", None)
                if source is not None:
                    # A new source replaces the built-in's wholesale: keys of a hub source make
                    # no sense for a local file and vice versa.
                    data["source"] = dict(source)
                data = _deep_merge(data, entry)
                data["name"] = name
            data["max_examples"] = {**(data.get("max_examples") or {}), **recipe.caps, **own_caps}
            spec = TaskSpec.from_dict(data, origin=f"{where}: tasks.{name}")
        except ValueError as err:
            raise RecipeError(f"{where}: tasks.{name}: {err}") from err
        specs[name] = spec.to_dict()
    return specs


def _method_kinds(method: Any) -> list[str]:
    """The statistics kinds a merge method config reads: its class's `statistics_kind`, and its
    fallback's (RegMean merges the non-linear tensors with another method)."""
    if not is_class_config(method):
        return []
    cls = import_path(method["class_path"])
    if cls is None:
        return []  # the stage check names a wrong class path; planning does not
    kinds = [cls.statistics_kind] if getattr(cls, "statistics_kind", None) else []
    return kinds + _method_kinds((method.get("init_args") or {}).get("fallback"))


def _primary(spec: dict[str, Any]) -> str:
    return spec["metrics"][0]


class Planner:
    """Builds the stage configs of a recipe.

    Args:
        recipe: the checked recipe.
        specs: resolved task specs (`resolve_task_specs(recipe)`).
    """

    def __init__(self, recipe: Recipe, specs: dict[str, dict[str, Any]]) -> None:
        self.recipe = recipe
        self.specs = specs
        self.out = Path(recipe.output_dir)

    # -- paths -------------------------------------------------------------------------------
    @property
    def experts_dir(self) -> Path:
        return Path(self.recipe.experts_dir) if self.recipe.experts_dir else self.out / "experts"

    @property
    def config_dir(self) -> Path:
        return self.out / "configs"

    def fit_dir(self, name: str) -> Path:
        return self.out / "fit" / name

    def eval_dir(self, row: str) -> Path:
        return self.out / "eval" / row

    # -- pieces ------------------------------------------------------------------------------
    def _data(self, tasks: list[str], extra: dict[str, Any]) -> dict[str, Any]:
        init: dict[str, Any] = {"tasks": [copy.deepcopy(self.specs[t]) for t in tasks]}
        # Inputs are prepared by the backbone's own tokenizer, or its image processor for vision.
        if all(self.specs[t]["kind"] == "image_classification" for t in tasks):
            init["image_processor"] = self.recipe.backbone
        else:
            init["tokenizer"] = self.recipe.backbone
        init["seed"] = self.recipe.seed
        if self.recipe.data_dir:
            init["data_dir"] = self.recipe.data_dir
        if self.recipe.task_dirs:
            init["task_dirs"] = list(self.recipe.task_dirs)
        return {"class_path": DATA_CLASS, "init_args": _deep_merge(init, extra)}

    def _fit(self, name: str, tasks: list[str], training: Training, experts_dir: Path | None) -> dict[str, Any]:
        model_init: dict[str, Any] = {"backbone": self.recipe.backbone, "family": self.recipe.family}
        if training.mode == "lora":
            model_init["lora"] = copy.deepcopy(training.lora)
        monitor = "val/avg/score" if len(tasks) > 1 else f"val/{tasks[0]}/{_primary(self.specs[tasks[0]])}"
        fit_dir = self.fit_dir(name)
        trainer: dict[str, Any] = {
            "max_epochs": training.max_epochs,
            "max_steps": training.max_steps,
            "default_root_dir": str(fit_dir),
        }
        if "logger" not in training.trainer:
            # A CSV log unless the recipe names a logger; the recipe's is passed as given (merged
            # into this block, an MLFlowLogger would receive the CSVLogger's `name`/`save_dir`).
            trainer["logger"] = {"class_path": CSV_LOGGER_CLASS, "init_args": {"save_dir": str(fit_dir), "name": "logs"}}
        trainer.update({
            "callbacks": [
                {
                    "class_path": CHECKPOINT_CLASS,
                    "init_args": {
                        "dirpath": str(fit_dir / "checkpoints"),
                        "monitor": monitor,
                        "mode": "max",
                        "save_top_k": 1,
                        "save_last": True,
                        "filename": "best",
                    },
                },
            ],
        })
        if training.early_stopping is not None:
            # Trained to the plateau: the fit stops when the metric the checkpoint and the
            # collector select by stops improving (both keep the best epoch, not the last).
            trainer["callbacks"].append({
                "class_path": EARLY_STOPPING_CLASS,
                "init_args": {**dict(training.early_stopping), "monitor": monitor, "mode": "max"},
            })
        if experts_dir is not None:
            trainer["callbacks"].append({
                "class_path": COLLECTOR_CLASS,
                "init_args": {
                    "experts_dir": str(experts_dir),
                    "monitor": monitor,
                    "mode": "max",
                    "save_format": training.save_format,
                },
            })
        return {
            "seed_everything": self.recipe.seed,
            "trainer": _deep_merge(trainer, training.trainer),
            "model": {"class_path": MODULE_CLASS, "init_args": _deep_merge(model_init, training.model)},
            "data": self._data(tasks, training.data),
        }

    def _eval_trainer(self, row: str) -> dict[str, Any]:
        trainer = {"default_root_dir": str(self.eval_dir(row)), "logger": False}
        return _deep_merge(trainer, self.recipe.evaluation.trainer)

    def _eval_config(self, row: str, model: dict[str, Any]) -> dict[str, Any]:
        return {
            "seed_everything": self.recipe.seed,
            "trainer": self._eval_trainer(row),
            "model": model,
            "data": self._data(self.recipe.task_names, self.recipe.evaluation.data),
        }

    # -- stages ------------------------------------------------------------------------------
    def expert_stages(self) -> list[Stage]:
        return [
            Stage(f"fit_{task}", "fit", self._fit(task, [task], self.recipe.expert_training(task), self.experts_dir),
                  kind="expert", task=task)
            for task in self.recipe.task_names
        ]

    def best_checkpoint(self, name: str) -> Path:
        return self.fit_dir(name) / "checkpoints" / "best.ckpt"

    def multitask_stages(self) -> list[Stage]:
        """The joint model: a fit over every task, then `test` of its best checkpoint."""
        if not self.recipe.multitask.enabled:
            return []
        training = self.recipe.multitask_training()
        tasks = self.recipe.task_names
        fit_config = self._fit(MULTITASK_ROW, tasks, training, experts_dir=None)
        fit = Stage(f"fit_{MULTITASK_ROW}", "fit", fit_config, kind="multitask")
        row = MULTITASK_ROW
        test_config = {
            "seed_everything": self.recipe.seed,
            "trainer": _deep_merge(self._eval_trainer(row), {"callbacks": [
                {"class_path": REPORT_CALLBACK_CLASS, "init_args": {"report_dir": str(self.eval_dir(row)), "name": row}},
            ]}),
            "model": copy.deepcopy(fit_config["model"]),
            "data": self._data(tasks, self.recipe.evaluation.data),
        }
        test = Stage(f"test_{row}", "test", test_config, kind="baseline", row=row, report_dir=self.eval_dir(row),
                     extra_args=["--ckpt_path", str(self.best_checkpoint(MULTITASK_ROW))])
        return [fit, test]

    def baseline_stages(self) -> list[Stage]:
        """The pre-trained backbone with the experts' heads, and each expert on its own task."""
        stages = []
        rows = [("pretrained", PRETRAINED_CLASS)] * self.recipe.baselines.pretrained
        rows += [(REFERENCE_ROW, EXPERTS_CLASS)] * self.recipe.baselines.individual
        for row, class_path in rows:
            model = {"class_path": class_path,
                     "init_args": {"experts": str(self.experts_dir), "report_dir": str(self.eval_dir(row))}}
            stages.append(Stage(f"test_{row}", "test", self._eval_config(row, model), kind="baseline",
                                row=row, report_dir=self.eval_dir(row)))
        return stages

    def statistics_kinds(self) -> list[str]:
        """The kinds the statistics stages compute: the recipe's `statistics.kinds`, else those
        its merge methods read, in a fixed order."""
        wanted = set(self.recipe.statistics.kinds)
        if not wanted:
            for run in self.recipe.merges:
                wanted.update(_method_kinds(run.method))
        from neuroflow.statistics import KINDS

        unknown = sorted(wanted - set(KINDS))
        if unknown:
            raise RecipeError(f"{self.recipe.source_path or '<recipe>'}: statistics.kinds: unknown {unknown}; "
                              f"choose from {list(KINDS)}")
        return [k for k in KINDS if k in wanted]

    def statistics_stages(self) -> list[Stage]:
        """`python -m neuroflow stats` per expert, over its own training data as its fit read it,
        when a kind is needed (the statistics land next to the expert, where the merges read them)."""
        kinds = self.statistics_kinds()
        if not kinds:
            return []
        settings = self.recipe.statistics
        stages = []
        for task in self.recipe.task_names:
            config = {
                "experts": str(self.experts_dir),
                "data": self._data([task], self.recipe.expert_training(task).data),
                "kinds": ",".join(kinds),
                "max_batches": settings.max_batches,
                "tasks": task,
                "fisher_labels": settings.fisher_labels,
                "seed": settings.seed,
                "threads": settings.threads,
                "accelerator": settings.accelerator,
            }
            stages.append(Stage(f"stats_{task}", "stats", config, kind="statistics", task=task))
        return stages

    def merge_stages(self) -> list[Stage]:
        stages = []
        for run in self.recipe.merges:
            out = self.out / "merged" / run.name
            init: dict[str, Any] = {"experts": str(self.experts_dir), "method": copy.deepcopy(run.method)}
            if run.search:
                init["search"] = copy.deepcopy(run.search)
            model = {"class_path": MERGE_CLASS, "init_args": _deep_merge(init, run.merge)}
            config = self._eval_config(run.name, model)
            config["trainer"]["default_root_dir"] = str(out)
            config["output_dir"] = str(out)
            # The individual row already scored the experts on the test splits: merges normalize by
            # that report instead of re-evaluating them. A search's validation normalizers come from
            # the manifest (recorded at fit time); the merge command reads each from its source.
            if self.recipe.baselines.individual:
                config["reference"] = str(self.eval_dir(REFERENCE_ROW))
            stages.append(Stage(f"merge_{run.name}", "merge", config, kind="merge", row=run.name,
                                report_dir=out))
        return stages

    def stages(self) -> list[Stage]:
        """Every stage in run order: experts, joint model, baselines, statistics, merges."""
        return (self.expert_stages() + self.multitask_stages() + self.baseline_stages()
                + self.statistics_stages() + self.merge_stages())


def plan_recipe(recipe: Recipe) -> Planner:
    """Resolve the recipe's tasks and return its planner (raises `RecipeError` early)."""
    if not recipe.tasks:
        raise RecipeError(f"{recipe.source_path}: no tasks")
    return Planner(recipe, resolve_task_specs(recipe))
