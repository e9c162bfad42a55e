"""A peft adapter folder as an expert: its task vector densified one tensor at a time.

The adapter's own tensors (LoRA factors, a few whole tensors) are small and read once; the dense
`B @ A * scaling` of a weight (with rsLoRA, DoRA, Conv1D and embedding variants, by
`neuroflow.experts.lora_delta`) exists only while the engine merges that weight.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from neuroflow.checkpoints.errors import CheckpointError

ADAPTER_CONFIG = "adapter_config.json"


def is_adapter(path: str | os.PathLike) -> bool:
    """Whether `path` is a peft adapter folder (it has `adapter_config.json`)."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


class AdapterExpert:
    """The task vector of a peft LoRA/rsLoRA/DoRA adapter against a base, tensor by tensor.

    Args:
        path: the adapter folder (`save_pretrained` of a peft model).
        base: the base weights (a lazy mapping with `meta`, e.g. `CheckpointFolder`): only its
            names and shapes are read here.

    Raises:
        CheckpointError: not an adapter, an adapter tensor matching no base weight, or a shape
            that does not fit, naming the adapter file and the tensor.
    """

    def __init__(self, path: str | os.PathLike, base: Mapping[str, Tensor]) -> None:
        # Imported here: the neuroflow.experts package imports Lightning and the models (seconds),
        # which a merge of full fine-tunes does not need.
        from neuroflow.experts.lora_delta import adapter_plan, read_adapter

        self.path = Path(path)
        try:
            self.config, tensors = read_adapter(self.path)
            self.whole, self.factors = adapter_plan(self.config, tensors, self.path)
        except (FileNotFoundError, ValueError) as err:
            raise CheckpointError(str(err)) from None
        weights = self.path / "adapter_model.safetensors"
        self.file = weights if weights.is_file() else self.path / "adapter_model.bin"
        for name, tensor in self.whole.items():
            self._check(name, tuple(tensor.shape), base)
        for name, parts in self.factors.items():
            self._check(name, parts.delta_shape(), base)

    def _check(self, name: str, shape: tuple[int, ...], base: Mapping[str, Tensor]) -> None:
        if name not in base:
            raise CheckpointError(f"{self.file}: adapter tensor for {name!r} matches no tensor of the base")
        base_shape = tuple(base.meta(name)[0]) if hasattr(base, "meta") else tuple(base[name].shape)
        if tuple(shape) != base_shape:
            raise CheckpointError(
                f"{self.file}: the adapter's update of {name!r} has shape {tuple(shape)}, the base tensor has {base_shape}"
            )

    @property
    def targets(self) -> list[str]:
        """Base tensor names this adapter changes."""
        return sorted(set(self.whole) | set(self.factors))

    @property
    def base_model(self) -> str | None:
        """`base_model_name_or_path` recorded by peft."""
        return self.config.get("base_model_name_or_path")

    def describe(self) -> dict[str, Any]:
        """JSON-friendly facts for the model card."""
        ranks = sorted({int(p.a.shape[0]) for p in self.factors.values()})
        kind = "dora" if any(p.magnitude is not None for p in self.factors.values()) else (
            "rslora" if self.config.get("use_rslora") else "lora")
        return {"kind": kind, "ranks": ranks, "targets": len(self.targets), "base_model_name_or_path": self.base_model}

    def task_vector(self, name: str, base: Tensor, dtype: torch.dtype, out: Tensor | None = None) -> Tensor:
        """`theta - theta_0` of tensor `name` (zeros where the adapter changes nothing).

        Args:
            name: base tensor name.
            base: the pre-trained tensor.
            dtype: computation dtype.
            out: optional destination.
        """
        delta: Tensor | None = None
        if name in self.whole:
            delta = self.whole[name].float() - base.float()
        if name in self.factors:
            from neuroflow.experts.lora_delta import lora_weight_delta

            try:
                dense = lora_weight_delta(self.factors[name], base, self.file)
            except ValueError as err:
                raise CheckpointError(str(err)) from None
            delta = dense if delta is None else delta + dense
        if out is None:
            return torch.zeros(base.shape, dtype=dtype) if delta is None else delta.to(dtype)
        return out.zero_() if delta is None else out.copy_(delta)

