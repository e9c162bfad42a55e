"""Fine-tuning defaults for the optimizer and learning-rate schedule.

Both are ordinary classes so that LightningCLI's `OptimizerCallable` / `LRSchedulerCallable`
arguments can take them as defaults and still accept any other torch optimizer or scheduler.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR


class AdamW(torch.optim.AdamW):
    """`torch.optim.AdamW` with transformer fine-tuning defaults (lr 2e-5, weight decay 0.01).

    Args:
        params: parameters or parameter groups (groups may override `lr` and `weight_decay`).
        lr: peak learning rate.
        weight_decay: decoupled weight decay.
        betas: Adam moment coefficients.
        eps: Adam epsilon.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 2e-5,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        super().__init__(params, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps)


class LinearWarmup(LambdaLR):
    """Linear warm-up from 0 to the peak learning rate, then linear decay to `final_ratio` x peak.

    The total number of optimizer steps is usually unknown when the scheduler is built, so
    `MultiTaskModule.configure_optimizers` calls `set_total_steps(trainer.estimated_stepping_batches)`.

    Args:
        optimizer: the optimizer to schedule.
        warmup_ratio: fraction of the total steps spent warming up (ignored if `warmup_steps` is set).
        warmup_steps: absolute number of warm-up steps.
        total_steps: total optimizer steps; filled in by the module when None.
        final_ratio: learning rate at the last step, as a fraction of the peak (0 = decay to zero,
            1 = constant after warm-up).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        warmup_ratio: float = 0.06,
        warmup_steps: int | None = None,
        total_steps: int | None = None,
        final_ratio: float = 0.0,
    ) -> None:
        if not 0.0 <= warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
        if not 0.0 <= final_ratio <= 1.0:
            raise ValueError(f"final_ratio must be in [0, 1], got {final_ratio}")
        self.warmup_ratio = warmup_ratio
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.final_ratio = final_ratio
        super().__init__(optimizer, self._factor)

    def set_total_steps(self, total_steps: int) -> None:
        """Fix the schedule length and re-apply the current step's learning rate."""
        self.total_steps = max(int(total_steps), 1)
        lrs = [base * self._factor(self.last_epoch) for base in self.base_lrs]
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        self._last_lr = lrs

    def _warmup(self) -> int:
        if self.warmup_steps is not None:
            return self.warmup_steps
        return int(self.warmup_ratio * self.total_steps) if self.total_steps else 0

    def _factor(self, step: int) -> float:
        warmup = self._warmup()
        if step < warmup:
            return step / warmup
        if not self.total_steps:
            return 1.0
        progress = min((step - warmup) / max(self.total_steps - warmup, 1), 1.0)
        return 1.0 - (1.0 - self.final_ratio) * progress

    def state_dict(self) -> dict[str, Any]:
        # LambdaLR would store the bound method's __dict__; keep only plain numbers so that
        # checkpoints load with `weights_only=True`.
        return {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "lr_lambdas")}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.__dict__.update(state_dict)


def parameter_groups(parts: list[tuple[torch.nn.Module, float | None]]) -> list[dict[str, Any]]:
    """Trainable parameters of each part, split into decayed matrices and non-decayed vectors
    (biases, norms); a part's learning rate (e.g. `head_lr`) applies to both of its groups.

    Args:
        parts: (module, learning rate or None for the optimizer's) pairs.
    """
    groups: list[dict[str, Any]] = []
    for part, lr in parts:
        params = [p for p in part.parameters() if p.requires_grad]
        for decay in (True, False):
            chosen = [p for p in params if (p.ndim >= 2) == decay]
            if chosen:
                group: dict[str, Any] = {"params": chosen}
                if not decay:
                    group["weight_decay"] = 0.0
                if lr is not None:
                    group["lr"] = lr
                groups.append(group)
    return groups


def optimizers_config(optimizer: torch.optim.Optimizer, scheduler_factory: Any, interval: str, trainer: Any) -> Any:
    """What `configure_optimizers` returns: the optimizer, with its scheduler when there is one.

    Args:
        optimizer: the built optimizer.
        scheduler_factory: a callable taking the optimizer, or None for a constant rate.
        interval: `step` or `epoch`.
        trainer: the Trainer (`estimated_stepping_batches` / `max_epochs` size schedules with
            `set_total_steps`; read only then).
    """
    import math

    from lightning.pytorch.utilities import rank_zero_warn

    if scheduler_factory is None:
        return optimizer
    scheduler = scheduler_factory(optimizer)
    if hasattr(scheduler, "set_total_steps"):
        total = trainer.estimated_stepping_batches
        if interval == "epoch":
            total = trainer.max_epochs
        if total is None or not math.isfinite(total) or total < 1:
            rank_zero_warn("cannot tell the number of training steps; the schedule will not decay")
        else:
            scheduler.set_total_steps(int(total))
    config: dict[str, Any] = {"scheduler": scheduler, "interval": interval}
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        config.update(monitor="val/avg/score", interval="epoch")
    return {"optimizer": optimizer, "lr_scheduler": config}
