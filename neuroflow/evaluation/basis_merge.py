"""Cheap search candidates: hyperparameters that only scale parts of the merged update.

Several methods are linear in some of their hyperparameters: NeuroMerging's update is
`lambda_1 * psi_par + lambda_2 * psi_orth` (point parameters: `lambda_2 * ties`), and TIES, task
arithmetic and DARE multiply their whole update by `scaling`. For a grid over such coefficients the
expensive part (trim statistics, neuron decomposition, sign election) is the same for every
candidate, so `BasisMerges` merges once per *basis* (unit coefficients) with the real engine and
forms each candidate as `theta_0 + sum_k c_k * basis_k`. Only hyperparameters outside that set
(e.g. `mask_rate`, `drop_rate`) need new merges, once per distinct combination.

The combined weights equal the engine's merge up to float rounding (the test suite checks this for
every method); the search's winner is merged again with the engine itself before it is saved.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from neuroflow.evaluation.search import with_params
from neuroflow.merging import DARE, TIES, MergeMethod, NeuroMerging, TaskArithmetic

# method class -> its hyperparameters that scale the update linearly (see the module docstring).
LINEAR_HPARAMS: dict[type, tuple[str, ...]] = {
    NeuroMerging: ("lambda_1", "lambda_2"),
    TIES: ("scaling",),
    TaskArithmetic: ("scaling",),
    DARE: ("scaling",),
}


def linear_hparams(method: MergeMethod) -> tuple[str, ...]:
    """The hyperparameters of `method` that only scale its update (exact class match: a subclass
    may change the maths)."""
    return LINEAR_HPARAMS.get(type(method), ())


def supports(method: MergeMethod, search: Mapping[str, Any]) -> bool:
    """Whether a grid over `search` can reuse basis merges (it varies a linear coefficient)."""
    return any(k in linear_hparams(method) for k in search)


def _compute_dtype(tensor: Tensor) -> torch.dtype:
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


class BasisMerges:
    """Basis updates of one method for the current non-linear hyperparameters, and candidates
    formed from them.

    Args:
        merge_fn: merges with a method and returns (merged weights, engine info).
        base: the pre-trained weights (plain names).
    """

    def __init__(self, merge_fn: Callable[[MergeMethod], tuple[dict[str, Tensor], dict[str, Any]]],
                 base: Mapping[str, Tensor]) -> None:
        self.merge_fn = merge_fn
        self.base = base
        self._group: tuple | None = None
        self._basis: list[dict[str, Tensor]] = []
        self._auto_lambda: float | None = None

    @staticmethod
    def group_key(method: MergeMethod) -> tuple:
        """The non-linear hyperparameters: candidates sharing them share the basis."""
        linear = linear_hparams(method)
        return (type(method),) + tuple(sorted((k, repr(v)) for k, v in method.hparams().items() if k not in linear))

    def _delta(self, method: MergeMethod) -> tuple[dict[str, Tensor], dict[str, Any]]:
        merged, info = self.merge_fn(method)
        delta = {}
        for name, base in self.base.items():
            if base.is_floating_point():
                dtype = _compute_dtype(base)
                delta[name] = merged[name].to(dtype) - base.to(dtype)
        return delta, info

    def _build(self, method: MergeMethod) -> None:
        self._basis = []  # free the previous group's basis first
        if isinstance(method, NeuroMerging):
            par, _ = self._delta(with_params(method, {"lambda_1": 1.0, "lambda_2": 0.0}))
            orth, info = self._delta(with_params(method, {"lambda_1": 0.0, "lambda_2": "auto"}))
            # The second basis is merged with the automatic lambda_2: remember it to rescale.
            self._auto_lambda = float(info["statistics"]["lambda_2"])
            self._basis = [par, orth]
        else:
            unit, _ = self._delta(with_params(method, {"scaling": 1.0}))
            self._basis = [unit]
        self._group = self.group_key(method)

    def coefficients(self, method: MergeMethod) -> list[float]:
        if isinstance(method, NeuroMerging):
            lambda_2 = self._auto_lambda if method.lambda_2 == "auto" else float(method.lambda_2)
            return [float(method.lambda_1), lambda_2 / self._auto_lambda]
        return [float(method.scaling)]

    def weights(self, method: MergeMethod) -> dict[str, Tensor]:
        """The candidate's merged weights, `theta_0 + sum_k c_k basis_k`, in the base dtypes."""
        if self.group_key(method) != self._group:
            self._build(method)
        coeffs = self.coefficients(method)
        out = {}
        for name, base in self.base.items():
            if name not in self._basis[0]:
                out[name] = base
                continue
            value = base.to(_compute_dtype(base)).clone()
            for c, basis in zip(coeffs, self._basis):
                if c != 0.0:
                    value.add_(basis[name], alpha=c)
            out[name] = value.to(base.dtype)
        return out
