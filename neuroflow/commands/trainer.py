"""The Trainer behind every `neuroflow` subcommand.

LightningCLI maps each subcommand to a Trainer method, so `merge` is a method here; its
parameters (after `model` and `datamodule`) are the command's flags.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule, Trainer


class NeuroTrainer(Trainer):
    """Lightning's Trainer with neuroflow's defaults and a `merge` method.

    `use_distributed_sampler` defaults to False: neuroflow's DataModule shards data itself, with
    multi-task sampling for training and unpadded shards for evaluation, so that metrics are the
    same on 1 and N processes (Lightning's DistributedSampler pads with repeated samples).
    """

    def __init__(self, *args: Any, use_distributed_sampler: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, use_distributed_sampler=use_distributed_sampler, **kwargs)

    def merge(
        self,
        model: LightningModule,
        datamodule: LightningDataModule | None = None,
        evaluate: bool = True,
        output_dir: str | None = None,
        reference: str = "manifest",
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

        return run_merge(self, model, datamodule, evaluate=evaluate, output_dir=output_dir, reference=reference)
