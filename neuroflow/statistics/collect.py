"""`compute_statistics`: the Python API of the statistics pass, one Trainer loop per expert.

For every expert: a `MultiTaskDataModule` of the data config restricted to the expert's own task
(its task spec as recorded at fit time, so the same split and cap it was trained on), its training
loader capped at `max_batches`, one `trainer.validate` of a `StatisticsModule` over it, and one file
per kind written atomically into `<expert folder>/statistics/`.
"""

from __future__ import annotations

import datetime as _dt
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

import neuroflow
from neuroflow.class_paths import resolve_class
from neuroflow.data.datamodule import MultiTaskDataModule
from neuroflow.data.registry import resolve_task
from neuroflow.data.task_spec import TaskSpec
from neuroflow.experts.expert_set import ExpertSet
from neuroflow.statistics.files import check_kind, expert_metadata, statistics_path, write_statistics
from neuroflow.statistics.module import StatisticsModule

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class StatisticsRecord:
    """What one statistics file holds and what it cost.

    Args:
        expert: the expert's name.
        task: its task.
        kind: `regmean` or `fisher`.
        path: the written file.
        seconds: wall time of the expert's pass (shared by its kinds, which one pass computes).
        cpu_seconds: CPU time of this process during the pass (all threads; less sensitive than
            the wall time to other jobs on a shared machine).
        bytes: the file size.
        examples: training examples seen.
        batches: training batches seen.
        tensors: tensors in the file.
    """

    expert: str
    task: str
    kind: str
    path: Path
    seconds: float
    cpu_seconds: float
    bytes: int
    examples: int
    batches: int
    tensors: int

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path)}


def data_settings(data: str | os.PathLike | Mapping[str, Any] | None) -> tuple[type, dict[str, Any]]:
    """(DataModule class, init args) of a data config: a YAML file like `configs/data/text4.yaml`
    (`class_path` + `init_args`, or the init args alone), or the same as a mapping.

    Args:
        data: the config; None = `MultiTaskDataModule` with its defaults (tasks from the experts).
    """
    if data is None:
        return MultiTaskDataModule, {}
    if isinstance(data, (str, os.PathLike)):
        loaded = yaml.safe_load(Path(data).read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, Mapping):
            raise ValueError(f"data config {data}: expected a mapping, got {type(loaded).__name__}")
        data = loaded
    data = dict(data)
    cls: type = MultiTaskDataModule
    if "class_path" in data:
        cls = resolve_class(data["class_path"], MultiTaskDataModule, "neuroflow.data", "data class_path")
        data = dict(data.get("init_args") or {})
    return cls, data


def task_name(entry: str | TaskSpec | Mapping[str, Any], task_dirs: Sequence[str] | None = None) -> str:
    """The name of a data config's task entry (a name, a task YAML path or an inline spec)."""
    if isinstance(entry, TaskSpec):
        return entry.name
    if isinstance(entry, Mapping):
        return str(entry["name"])
    return entry if not str(entry).endswith((".yaml", ".yml")) else resolve_task(entry, task_dirs).name


def expert_task_spec(experts: ExpertSet, task: str, settings: Mapping[str, Any]) -> str | TaskSpec | dict:
    """The task spec of an expert's own training data: as recorded at fit time when it is, else the
    data config's entry for that task, else the task name."""
    raw = experts[task].task_specs.get(task)
    if raw:
        return TaskSpec.from_dict(dict(raw), origin=f"expert {experts[task].name}")
    for entry in settings.get("tasks") or []:
        if task_name(entry, settings.get("task_dirs")) == task:
            return entry
    return task


def compute_statistics(
    experts: str | os.PathLike | Sequence[str | os.PathLike],
    data: str | os.PathLike | Mapping[str, Any] | None = None,
    kinds: Sequence[str] = ("regmean", "fisher"),
    max_batches: int | None = 50,
    tasks: Sequence[str] | None = None,
    fisher_labels: str = "sample",
    seed: int = 0,
    dtype: str = "float32",
    accelerator: str = "auto",
    threads: int | None = None,
    progress: bool = False,
    trainer_kwargs: Mapping[str, Any] | None = None,
) -> list[StatisticsRecord]:
    """Compute and save the statistics of every requested expert over its own training data.

    Args:
        experts: an experts directory (its manifest), or expert folders.
        data: the data config (see `data_settings`): loader settings (`max_length`, `batch_size`,
            `data_dir`, `tokenizer`, ...) and, unless `tasks` is given, the tasks whose experts are
            processed. Its `max_train_examples`, when set, overrides the experts' recorded caps.
        kinds: `regmean` and/or `fisher`.
        max_batches: training batches per expert (None: the whole capped training split once).
        tasks: the experts' tasks to process; default: the data config's tasks, else every expert.
        fisher_labels: `sample` or `expected` (see `StatisticsModule`).
        seed: seed of the Fisher's label draws.
        dtype: dtype of the saved tensors (`float32` or `float64`; sums are taken in float64 for
            Grams and float32 for Fishers either way).
        accelerator: the Trainer's accelerator (`auto`, `cpu`, `gpu`, ...); one device.
        threads: torch's intra-op CPU threads during the passes (restored afterwards); None keeps
            torch's setting. The Fisher's batch-of-one passes are small ops: on a shared CPU, one
            thread was 5x faster than two (measured under load).
        progress: show Lightning's progress bar.
        trainer_kwargs: more `NeuroTrainer` arguments.

    Returns:
        one record per expert and kind, in order.
    """
    from neuroflow.commands.trainer import NeuroTrainer

    kinds = [check_kind(k) for k in dict.fromkeys(kinds)]
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches must be >= 1 or None, got {max_batches}")
    cls, settings = data_settings(data)
    source = experts if isinstance(experts, (str, os.PathLike)) else [str(p) for p in experts]
    if isinstance(source, os.PathLike):
        source = str(source)
    if tasks is None and settings.get("tasks"):
        tasks = [task_name(t, settings.get("task_dirs")) for t in settings["tasks"]]
    expert_set = ExpertSet(source, list(tasks) if tasks is not None else None)
    specs = [expert_task_spec(expert_set, t, settings) for t in expert_set.tasks]
    modules = {t: cls(**{**settings, "tasks": [spec], "tokenizer": settings.get("tokenizer") or expert_set.base_model})
               for t, spec in zip(expert_set.tasks, specs)}
    module = StatisticsModule(experts=source, tasks=[m.task_specs[0] for m in modules.values()], kinds=kinds,
                              fisher_labels=fisher_labels, seed=seed)
    trainer = NeuroTrainer(**{
        "accelerator": accelerator, "devices": 1, "logger": False, "enable_checkpointing": False,
        "enable_model_summary": False, "enable_progress_bar": progress,
        # Fisher needs gradients inside the loop; inference mode would forbid them.
        "inference_mode": False, "limit_val_batches": max_batches if max_batches is not None else 1.0,
        "num_sanity_val_steps": 0,
        **dict(trainer_kwargs or {}),
    })
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _passes(modules, expert_set, module, trainer, max_batches, dtype)
    finally:
        torch.set_num_threads(previous)


def _passes(modules: dict[str, MultiTaskDataModule], expert_set: ExpertSet, module: StatisticsModule,
            trainer: Any, max_batches: int | None, dtype: str) -> list[StatisticsRecord]:
    """One `trainer.validate` per expert over its training batches, then its files."""
    records = []
    for task, datamodule in modules.items():
        expert = expert_set[task]
        loader = datamodule.train_dataloader()
        if len(loader) == 0:
            raise ValueError(f"expert {expert.name!r}: task {task!r} has no training batches")
        module.start(task)
        start, cpu_start = time.perf_counter(), time.process_time()
        trainer.validate(module, dataloaders=loader, verbose=False)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        module.finish()
        for kind, (tensors, extra) in module.results().items():
            path = statistics_path(expert, kind)
            metadata = {
                **expert_metadata(expert, kind), **extra,
                "examples": module.examples, "batches": module.batches, "max_batches": max_batches,
                "batch_size": datamodule.batch_size, "max_length": datamodule.max_length,
                "train_examples": len(datamodule.split_data("train")[task]), "dtype": dtype,
                "seconds": round(seconds, 3), "cpu_seconds": round(cpu_seconds, 3),
                "neuroflow_version": neuroflow.__version__,
                "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            }
            size = write_statistics(path, {k: v.to(DTYPES[dtype]) for k, v in tensors.items()}, metadata)
            records.append(StatisticsRecord(expert.name, task, kind, path, round(seconds, 3), round(cpu_seconds, 3),
                                            size, module.examples, module.batches, len(tensors)))
    return records
