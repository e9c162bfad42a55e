"""Cheap search candidates: hyperparameters that only scale parts of the merged update.

Several methods are linear in some of their hyperparameters (each declares them in
`MergeMethod.linear_hparams`): NeuroMerging's update is `lambda_1 * psi_par + lambda_2 * psi_orth`,
and TIES, task arithmetic and DARE multiply their whole update by `scaling`. For a grid over such coefficients the
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

from neuroflow.merging.base import MergeMethod


def supports(method: MergeMethod, search: Mapping[str, Any]) -> bool:
    """Whether a grid over `search` can reuse basis merges (it varies a linear coefficient)."""
    return any(k in method.linear_hparams for k in search)


def _compute_dtype(tensor: Tensor) -> torch.dtype:
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


class BasisMerges:
    """Basis updates of one method for the current non-linear hyperparameters, and candidates
    formed from them (`MergeMethod.basis()` / `MergeMethod.coefficients()`).

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
        self._info: list[dict[str, Any]] = []

    @staticmethod
    def group_key(method: MergeMethod) -> tuple:
        """The non-linear hyperparameters: candidates sharing them share the basis."""
        return method.group_key()

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
        self._info = []
        for variant in method.basis():
            delta, info = self._delta(variant)
            self._basis.append(delta)
            self._info.append(info)
        self._group = self.group_key(method)

    def coefficients(self, method: MergeMethod) -> list[float]:
        return method.coefficients(self._info)

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
