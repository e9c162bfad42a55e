"""A saved peft LoRA adapter as a dense task vector under plain backbone names.

For a LoRA-wrapped weight W with factors A (r x in) and B (out x r), merging adds
`delta W = B @ A * scaling`, `scaling = alpha / r` (`alpha / sqrt(r)` with rsLoRA), transposed
for `fan_in_fan_out` layers (GPT-2 Conv1D) and for embeddings. DoRA rescales each output row of
W + delta W to its learned magnitude; the task vector is then the merged weight minus W. Tensors
the adapter stores whole (`modules_to_save`, trained biases) contribute `saved - base`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

PEFT_PREFIX = "base_model.model."
_FACTOR = re.compile(
    r"^(?P<module>.+)\.(?P<kind>lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)"
    r"(?:\.[^.]+)?(?:\.weight)?$"
)


def read_adapter(adapter_dir: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(adapter_config.json, adapter tensors) of a peft `save_pretrained` folder."""
    adapter_dir = Path(adapter_dir)
    config_path = adapter_dir / "adapter_config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{adapter_dir}: no adapter_config.json (not a peft adapter folder)")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{config_path}: peft_type {config.get('peft_type')!r} is not LORA")
    weights_path = adapter_dir / "adapter_model.safetensors"
    if weights_path.is_file():
        return config, load_file(str(weights_path))
    bin_path = adapter_dir / "adapter_model.bin"
    if bin_path.is_file():
        return config, torch.load(bin_path, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{adapter_dir}: no adapter_model.safetensors (or .bin)")


def _alpha_for(module: str, config: dict[str, Any]) -> float:
    for pattern, alpha in (config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?{pattern}$", module):
            return float(alpha)
    return float(config["lora_alpha"])


def _low_rank_delta(
    a: torch.Tensor, b: torch.Tensor, base: torch.Tensor, embedding: bool, fan_in_fan_out: bool
) -> torch.Tensor:
    if embedding:
        return (b @ a).T
    if a.dim() == 4:  # Conv2d: A is r x in x k x k, B is out x r x 1 x 1
        if a.shape[2:] == (1, 1):
            return (b.flatten(1) @ a.flatten(1)).reshape(base.shape)
        return torch.nn.functional.conv2d(a.permute(1, 0, 2, 3), b).permute(1, 0, 2, 3)
    if a.dim() != 2:
        raise ValueError(f"LoRA factors of rank {a.dim()} are not supported")
    delta = b @ a
    return delta.T if fan_in_fan_out else delta


@dataclass(frozen=True)
class LoraFactors:
    """The LoRA factors of one adapted weight, ready to densify (`lora_weight_delta`).

    Attributes:
        weight_key: the plain backbone name of the adapted weight (`<module>.weight`).
        a: factor A (float32), `lora_A` or `lora_embedding_A`.
        b: factor B (float32).
        scaling: `alpha / r` (`alpha / sqrt(r)` with rsLoRA).
        embedding: the factors are `lora_embedding_*` (delta is `(B @ A)^T`).
        fan_in_fan_out: the layer stores `in x out` (GPT-2 Conv1D).
        magnitude: DoRA's learned magnitude vector, or None.
    """

    weight_key: str
    a: torch.Tensor
    b: torch.Tensor
    scaling: float
    embedding: bool
    fan_in_fan_out: bool
    magnitude: torch.Tensor | None = None

    def delta_shape(self) -> tuple[int, ...]:
        """The shape of the dense delta (for header-only checks), without computing it."""
        if self.embedding:
            return (self.a.shape[1], self.b.shape[0])
        if self.a.dim() == 4:
            return (self.b.shape[0], self.a.shape[1], *self.a.shape[2:])
        out, fan_in = self.b.shape[0], self.a.shape[1]
        return (fan_in, out) if self.fan_in_fan_out else (out, fan_in)


def adapter_plan(
    config: dict[str, Any], tensors: dict[str, torch.Tensor], where: str | Path = "adapter"
) -> tuple[dict[str, torch.Tensor], dict[str, LoraFactors]]:
    """What an adapter changes, by plain backbone name, without touching any base weight.

    Args:
        config: `adapter_config.json`.
        tensors: the adapter's tensors (peft key names).
        where: how errors name the adapter (its folder).

    Returns:
        `(whole, factors)`: tensors stored whole (trained biases, `modules_to_save`; their task
        vector is `saved - base`), and the LoRA factors of each adapted weight.
    """
    fan_in_fan_out = bool(config.get("fan_in_fan_out", False))
    use_rslora = bool(config.get("use_rslora", False))
    parts_of: dict[str, dict[str, torch.Tensor]] = {}
    whole: dict[str, torch.Tensor] = {}
    for raw_key, tensor in tensors.items():
        key = raw_key[len(PEFT_PREFIX):] if raw_key.startswith(PEFT_PREFIX) else raw_key
        match = _FACTOR.match(key)
        if match:
            parts_of.setdefault(match["module"], {})[match["kind"]] = tensor.float()
        else:
            whole[key.replace(".base_layer.", ".")] = tensor
    factors: dict[str, LoraFactors] = {}
    for module, parts in parts_of.items():
        embedding = "lora_embedding_A" in parts
        a = parts.get("lora_embedding_A" if embedding else "lora_A")
        b = parts.get("lora_embedding_B" if embedding else "lora_B")
        if a is None or b is None:
            raise ValueError(f"{where}: module {module!r} lacks a LoRA A or B factor")
        rank = a.shape[0]
        alpha = _alpha_for(module, config)
        scaling = alpha / rank**0.5 if use_rslora else alpha / rank
        factors[f"{module}.weight"] = LoraFactors(
            f"{module}.weight", a, b, scaling, embedding, fan_in_fan_out, parts.get("lora_magnitude_vector")
        )
    return whole, factors


def lora_weight_delta(factors: LoraFactors, base: torch.Tensor, where: str | Path = "adapter") -> torch.Tensor:
    """The dense float32 task vector of one adapted weight (LoRA, rsLoRA or DoRA).

    Args:
        factors: from `adapter_plan`.
        base: the pre-trained weight (any float dtype).
        where: how errors name the adapter.
    """
    base = base.float()
    delta = _low_rank_delta(factors.a, factors.b, base, factors.embedding, factors.fan_in_fan_out) * factors.scaling
    if delta.shape != base.shape:
        raise ValueError(f"{where}: LoRA delta of {factors.weight_key} has shape {tuple(delta.shape)}, "
                         f"the weight has {tuple(base.shape)}")
    if factors.magnitude is not None:
        delta = _dora_delta(base, delta, factors.magnitude, factors.embedding, factors.fan_in_fan_out)
    return delta


def lora_adapter_deltas(
    adapter_dir: str | Path, base_state: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Dense `float32` deltas for every backbone tensor the adapter changes, by plain name.

    Args:
        adapter_dir: a folder written by peft's `save_pretrained`.
        base_state: the pre-trained backbone under plain names (`backbone_state_dict()`).

    Raises:
        ValueError: adapter tensors that map to no backbone weight, or shape mismatches, by name.
    """
    config, tensors = read_adapter(adapter_dir)
    whole, factors = adapter_plan(config, tensors, adapter_dir)
    deltas: dict[str, torch.Tensor] = {}

    def base_of(key: str) -> torch.Tensor:
        if key not in base_state:
            raise ValueError(f"{adapter_dir}: adapter tensor for {key!r} matches no backbone weight")
        return base_state[key]

    for plain, tensor in whole.items():
        base = base_of(plain)
        if base.shape != tensor.shape:
            raise ValueError(f"{adapter_dir}: {plain} has shape {tuple(tensor.shape)}, base {plain} "
                             f"has {tuple(base.shape)}")
        deltas[plain] = tensor.float() - base.float()
    for weight_key, parts in factors.items():
        delta = lora_weight_delta(parts, base_of(weight_key), adapter_dir)
        deltas[weight_key] = deltas.get(weight_key, 0) + delta
    return deltas


def _dora_delta(
    base: torch.Tensor, delta: torch.Tensor, magnitude: torch.Tensor, embedding: bool, fan_in_fan_out: bool
) -> torch.Tensor:
    """Merged DoRA weight minus the base: `m / ||W + dW|| * (W + dW) - W`, norms per output unit."""
    if base.dim() != 2:
        raise ValueError("DoRA task vectors are supported for linear and embedding layers only")
    # Put output units on rows: (out, in) for Linear, transposed for Conv1D and embeddings.
    transpose = embedding or fan_in_fan_out
    w = (base + delta).T if transpose else base + delta
    merged = w * (magnitude / w.norm(p=2, dim=1)).unsqueeze(1)
    return (merged.T if transpose else merged) - base
