"""Energy of a task update parallel and orthogonal to the pre-trained neurons (NeuroMerging's split).

For a neuron with pre-trained row `w0` and task row `tau`, NeuroMerging's projection coefficient is
`s = <tau, w0> / <w0, w0>`: the update splits into `s w0` (it rescales the neuron, "parallel") and
`tau - s w0` (it turns the neuron, "orthogonal"), and by Pythagoras `||tau||^2 = ||s w0||^2 +
||tau - s w0||^2`. Summed over the neurons of a tensor (or a layer), the parallel share says how much
of what fine-tuning changed is a rescaling: NeuroMerging Lite (`lambda_1 = 0`) drops that part, so a
task whose update is largely parallel is one Lite cannot keep. As in the merge, a neuron whose
pre-trained row is zero has `s = 0`: its whole update counts as orthogonal.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Scalars (T x rows x fan_in) per block of neurons: bounds the float64 temporaries.
_BLOCK_ELEMENTS = 1 << 18


def neuron_energy(w0: Tensor, task_rows: Tensor) -> tuple[Tensor, Tensor]:
    """Per task, `sum_rows ||s_t w0||^2` and `sum_rows ||tau_t - s_t w0||^2`, in float64.

    Args:
        w0: pre-trained rows (neurons), shape `(R, n)` (use `Route.to_neurons`).
        task_rows: the task rows, shape `(T, R, n)` (`Route.to_neurons(..., leading=1)`).

    Returns:
        `(parallel, orthogonal)`, each of shape `(T,)`; they add up to `||tau_t||^2` (to rounding).
    """
    if task_rows.dim() != 3 or w0.dim() != 2 or task_rows.shape[1:] != w0.shape:
        raise ValueError(f"expected w0 (R, n) and task rows (T, R, n), got {tuple(w0.shape)} and {tuple(task_rows.shape)}")
    num_tasks, rows, fan_in = task_rows.shape
    parallel = torch.zeros(num_tasks, dtype=torch.float64)
    orthogonal = torch.zeros(num_tasks, dtype=torch.float64)
    step = max(1, _BLOCK_ELEMENTS // max(1, num_tasks * fan_in))
    for start in range(0, rows, step):
        x = task_rows[:, start : start + step].to(torch.float64)
        w = w0[start : start + step].to(torch.float64)
        norm_sq = (w * w).sum(dim=-1)  # (r,)
        s = torch.where(norm_sq > 0, (x * w).sum(dim=-1) / torch.where(norm_sq > 0, norm_sq, 1.0), 0.0)
        along = s[..., None] * w  # (T, r, n)
        parallel += (along * along).sum(dim=(1, 2))
        # The rest computed directly, not as ||tau||^2 minus the parallel part: a nearly parallel
        # update would otherwise lose its small orthogonal share to cancellation.
        rest = x - along
        orthogonal += (rest * rest).sum(dim=(1, 2))
    return parallel, orthogonal


def parallel_fraction(parallel: Tensor, orthogonal: Tensor) -> Tensor:
    """`parallel / (parallel + orthogonal)` per task; NaN where a task changed nothing.

    Args:
        parallel: parallel energies, any shape.
        orthogonal: orthogonal energies, the same shape.
    """
    total = parallel + orthogonal
    return torch.where(total > 0, parallel / torch.where(total > 0, total, 1.0), torch.nan)
