"""`ExpertCollector`: turns a finished fit into an expert in a shared experts directory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from neuroflow.experts.artifacts import SAVE_FORMATS, save_expert
from neuroflow.experts.fingerprint import fingerprint_state_dict
from neuroflow.models.gathered import GatheredModule, is_sharded_strategy


class ExpertCollector(Callback):
    """When a fit ends, writes the best weights as an expert and registers it in the manifest.

    The weights come from the best checkpoint of the `ModelCheckpoint` that monitors the same
    metric (loaded with `weights_only=True`; the module keeps them afterwards), else from the
    final state. Only global rank 0 writes. Several fits may share one `experts_dir`.

    Under a sharding strategy (FSDP, DeepSpeed, ModelParallel) no process holds the weights: the
    expert is then written from the full state dict, gathered on rank 0 (the best checkpoint when
    it is a full-state-dict file, else `strategy.lightning_module_state_dict()`), and the module
    keeps its final weights.

    Args:
        experts_dir: the shared experts directory (created if needed).
        monitor: metric that selects the best weights; None = take the final weights.
        mode: `max` or `min` for `monitor`.
        save_format: for full fine-tuning, `task_vector` (fine-tuned minus pre-trained, float32)
            or `weights` (the fine-tuned backbone); LoRA fits always save the peft adapter.
        name: the expert's name (its folder); default: the task name (tasks joined by `+`).
    """

    def __init__(
        self,
        experts_dir: str = "runs/experts",
        monitor: str | None = "val/avg/score",
        mode: Literal["max", "min"] = "max",
        save_format: Literal["task_vector", "weights"] = "task_vector",
        name: str | None = None,
    ) -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"ExpertCollector: mode must be 'max' or 'min', got {mode!r}")
        if save_format not in SAVE_FORMATS:
            raise ValueError(f"ExpertCollector: save_format {save_format!r} is not one of {list(SAVE_FORMATS)}")
        self.experts_dir = Path(experts_dir)
        self.monitor = monitor
        self.mode = mode
        self.save_format = save_format
        self.name = name
        self.run_config: dict[str, Any] | None = None  # set by the CLI: the resolved config
        self.best_score: float | None = None
        self.best_metrics: dict[str, float] = {}
        self.last_metrics: dict[str, float] = {}
        self.entry: dict[str, Any] | None = None
        self._base_state: dict[str, torch.Tensor] | None = None
        self._base_fingerprint: str | None = None
        self._state_keys: dict[str, str] | None = None

    @property
    def state_key(self) -> str:
        return f"ExpertCollector[{self.experts_dir}|{self.name}]"

    def state_dict(self) -> dict[str, Any]:
        return {"best_score": self.best_score, "best_metrics": self.best_metrics}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_score = state_dict.get("best_score")
        self.best_metrics = dict(state_dict.get("best_metrics") or {})

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not hasattr(pl_module, "backbone_state_dict"):
            raise TypeError(f"ExpertCollector needs a neuroflow MultiTaskModule, got {type(pl_module).__name__}")
        state_dict_type = getattr(trainer.strategy, "_state_dict_type", "full")
        if is_sharded_strategy(trainer.strategy) and state_dict_type != "full":
            raise ValueError(
                f"ExpertCollector: the strategy saves {state_dict_type!r} state dicts; an expert needs the full "
                "weights on rank 0: set the strategy's state_dict_type to 'full' (configs/trainer/fsdp.yaml)"
            )
        if trainer.is_global_zero:
            self.experts_dir.mkdir(parents=True, exist_ok=True)
            if not os.access(self.experts_dir, os.W_OK):
                raise PermissionError(f"ExpertCollector: cannot write to experts_dir {self.experts_dir}")
        # `setup` runs before a `ckpt_path` checkpoint is restored and before a sharding strategy
        # wraps the module, so these are the whole pre-trained weights even when a fit resumes.
        # Only rank 0 writes, so only rank 0 keeps a copy (a 7B base is 28 GB per process).
        if not trainer.is_global_zero:
            return
        base = pl_module.backbone_state_dict()
        self._base_fingerprint = fingerprint_state_dict(base)
        needs_base = self.save_format == "task_vector" and not pl_module.hparams.get("lora")
        self._base_state = {k: v.detach().to("cpu", copy=True) for k, v in base.items()} if needs_base else None
        self._state_keys = pl_module.backbone_state_keys() if hasattr(pl_module, "backbone_state_keys") else None

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        self.last_metrics = metrics
        if self.monitor is None or self.monitor not in metrics:
            return
        score = metrics[self.monitor]
        better = self.best_score is None or (score > self.best_score if self.mode == "max" else score < self.best_score)
        if better:
            self.best_score, self.best_metrics = score, metrics

    def _best_checkpoint(self, trainer: Trainer) -> ModelCheckpoint | None:
        """The ModelCheckpoint that monitors `monitor` and has saved a best checkpoint."""
        if self.monitor is None:
            return None
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.monitor == self.monitor:
                path = callback.best_model_path
                if path and Path(path).is_file():
                    return callback
        rank_zero_warn(
            f"ExpertCollector: no ModelCheckpoint monitoring {self.monitor!r} saved a checkpoint; "
            "the expert gets the final weights"
        )
        return None

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        best = self._best_checkpoint(trainer)
        checkpoint = best.best_model_path if best is not None else None
        metrics = self.last_metrics
        sharded = is_sharded_strategy(trainer.strategy)
        gathered: dict[str, torch.Tensor] | None = None
        if best is not None:
            metrics = self.best_metrics or {self.monitor: float(best.best_model_score)}
            if not sharded:
                state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
                pl_module.load_state_dict(state)
            elif trainer.is_global_zero:
                # A full-state-dict checkpoint of a sharded fit already holds every weight.
                gathered = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
        elif sharded:
            # A collective call: every rank takes part, rank 0 receives the whole state dict.
            gathered = trainer.strategy.lightning_module_state_dict()
        if trainer.is_global_zero:
            config = self.run_config if self.run_config is not None else {"model": _plain(dict(pl_module.hparams))}
            source = pl_module if gathered is None else GatheredModule(pl_module, gathered, self._state_keys)
            self.entry = save_expert(
                self.experts_dir,
                source,
                base_state=self._base_state,
                base_fingerprint=self._base_fingerprint or fingerprint_state_dict(source.backbone_state_dict()),
                save_format=self.save_format,
                name=self.name,
                metrics=metrics,
                monitor=self.monitor if checkpoint else None,
                checkpoint=str(Path(checkpoint).resolve()) if checkpoint else None,
                config=config,
            )
            rank_zero_info(f"ExpertCollector: wrote expert {self.entry['name']!r} to {self.experts_dir}")
        self._base_state = None
        trainer.strategy.barrier("expert_collector")


def _plain(value: Any) -> Any:
    """JSON-friendly copy of hyper-parameters (anything exotic becomes its string)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
