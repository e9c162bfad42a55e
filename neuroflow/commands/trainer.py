"""The Trainer behind every `neuroflow` subcommand.

LightningCLI maps each subcommand to a Trainer method, so `merge` is a method here; its
parameters (after `model` and `datamodule`) are the command's flags.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar

from neuroflow.progress import LOG_INTERVAL_S, format_progress, interactive, progress_enabled

log = logging.getLogger("neuroflow.progress")


def _count(counts: Any, index: int) -> int | float:
    """The number of batches of dataloader `index` (Lightning keeps one count per dataloader)."""
    if isinstance(counts, list):
        return counts[index] if index < len(counts) else float("inf")
    return counts


class LogProgressBar(ProgressBar):
    """Lightning's progress as a log line every `interval` seconds and at the end of each epoch
    and evaluation, for logs without a terminal (a bar there becomes thousands of lines).

    Args:
        interval: seconds between two lines within an epoch or an evaluation.
    """

    def __init__(self, interval: float = LOG_INTERVAL_S) -> None:
        super().__init__()
        self.interval = interval
        self._enabled = True
        self._start = self._last = 0.0
        self._batches = 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _begin(self) -> None:
        self._start = self._last = time.monotonic()

    def _line(self, desc: str, n: int, total: int | float, force: bool = False, extra: str = "") -> None:
        now = time.monotonic()
        if not self._enabled or not (force or now - self._last >= self.interval):
            return
        self._last = now
        log.info("%s%s", format_progress(desc, n, total, now - self._start, "batch"), extra)

    def _metrics(self, trainer: Trainer, pl_module: LightningModule) -> str:
        items = {k: v for k, v in self.get_metrics(trainer, pl_module).items() if k != "v_num"}
        shown = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in items.items()]
        return (" " + " ".join(shown)) if shown else ""

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._begin()
        self._batches = 0

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._batches = batch_idx + 1
        self._line(f"epoch {trainer.current_epoch}", self._batches, self.total_train_batches,
                   extra=self._metrics(trainer, pl_module))

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._line(f"epoch {trainer.current_epoch}", self._batches, self.total_train_batches, force=True,
                   extra=self._metrics(trainer, pl_module))

    def _eval_start(self, *args: Any) -> None:
        self._begin()

    on_validation_start = on_test_start = on_predict_start = _eval_start

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if not trainer.sanity_checking:
            self._line(f"validation {dataloader_idx}", batch_idx + 1, _count(trainer.num_val_batches, dataloader_idx))

    def on_test_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self._line(f"test {dataloader_idx}", batch_idx + 1, _count(trainer.num_test_batches, dataloader_idx))

    def on_predict_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        self._line(f"predict {dataloader_idx}", batch_idx + 1, _count(trainer.num_predict_batches, dataloader_idx))


def default_progress_bar(enable_progress_bar: bool | None, callbacks: Any) -> tuple[bool | None, Any]:
    """The progress settings of a Trainer: off under `--quiet`, tqdm on a terminal, periodic log
    lines without one; a progress-bar callback the config names is kept as it is.

    Returns:
        `enable_progress_bar` and `callbacks` for `Trainer.__init__`.
    """
    listed = callbacks if isinstance(callbacks, list) else ([] if callbacks is None else [callbacks])
    if enable_progress_bar is False or any(isinstance(c, ProgressBar) for c in listed):
        return enable_progress_bar, callbacks
    if not progress_enabled():
        return False, callbacks
    # One style everywhere (tqdm, like the merge and data bars), not Lightning's rich default.
    bar = TQDMProgressBar() if interactive() else LogProgressBar()
    return True, [*listed, bar]


class NeuroTrainer(Trainer):
    """Lightning's Trainer with neuroflow's defaults and a `merge` method.

    `use_distributed_sampler` defaults to False: neuroflow's DataModule shards data itself, with
    multi-task sampling for training and unpadded shards for evaluation, so that metrics are the
    same on 1 and N processes (Lightning's DistributedSampler pads with repeated samples).

    Progress (`enable_progress_bar` unset or true): a tqdm bar on a terminal, a log line every
    30 s without one, nothing under `--quiet`; `enable_progress_bar: false` turns it off.
    """

    def __init__(self, *args: Any, use_distributed_sampler: bool = False, enable_progress_bar: bool | None = None,
                 callbacks: Any = None, **kwargs: Any) -> None:
        enable_progress_bar, callbacks = default_progress_bar(enable_progress_bar, callbacks)
        super().__init__(*args, use_distributed_sampler=use_distributed_sampler,
                         enable_progress_bar=enable_progress_bar, callbacks=callbacks, **kwargs)

    def merge(
        self,
        model: LightningModule,
        datamodule: LightningDataModule | None = None,
        evaluate: bool = True,
        output_dir: str | None = None,
        reference: str = "manifest",
        analyze: bool = True,
        max_shard_size: str = "5GB",
        dtype: str | None = None,
        threads: int | None = None,
        vocab: str = "refuse",
    ) -> dict[str, Any]:
        """Merge the experts of a MergeModule, save the merged model and (optionally) score it.

        With `model.init_args.search` set, every candidate of the grid is merged and scored on the
        validation splits first, and the best one (average normalized validation score) is kept.

        Args:
            model: a `neuroflow.evaluation.MergeModule` naming the experts and the merge method.
            datamodule: the tasks to evaluate on (test splits; validation splits for a search).
            evaluate: score the merged model on every task's test split after saving it, and write
                `report.{json,md,png}` next to it.
            output_dir: where the merged model goes (replaced only once everything succeeded);
                default `runs/merged/<method>` (`<method>_search` with a search).
            reference: the experts' numbers that normalize the scores: `manifest` (recorded at fit
                time; experts without them are evaluated here), `evaluate` (always score the experts
                on this run's data), or the directory / report.json of an experts report (used
                for its split; the other split falls back to `manifest`).
            analyze: also write the experts' neuron-subspace analysis (`analysis.{json,md,png}`:
                parallel/orthogonal update energy, sign conflicts, mask overlap, cosines per layer)
                and add its section to the report.
            max_shard_size: for checkpoints made outside neuroflow (`model.base` + model folders,
                hub ids or adapters as `model.experts`): the largest weights shard written, e.g. `5GB`.
            dtype: for such checkpoints: the dtype of the written weights (`bfloat16`, `float16`,
                `float32`); default: each tensor's base dtype.
            threads: for such checkpoints: threads used by the merge maths (default: every core).
            vocab: for such checkpoints: `refuse` a resized vocabulary, or merge the `shared_rows`
                and keep each added row from the expert that added it.
        """
        from neuroflow.commands.merge import run_merge

        if getattr(model, "external", None):
            from neuroflow.commands.merge_checkpoints import run_checkpoint_merge

            return run_checkpoint_merge(model, output_dir, evaluate, datamodule is not None, max_shard_size, dtype,
                                        threads, vocab)

        return run_merge(self, model, datamodule, evaluate=evaluate, output_dir=output_dir, reference=reference,
                         analyze=analyze)
