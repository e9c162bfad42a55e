"""`DecoderFSDPStrategy`: Lightning's FSDP, wrapping the decoder layers named by class name.

Lightning's `FSDPStrategy` takes the layer classes themselves, which a YAML config cannot give;
this subclass takes their names (`[LlamaDecoderLayer]`) and finds the classes in the model when it
is wrapped. Without names it uses the Hugging Face model's own `_no_split_modules` (the decoder
layer of LLaMA, Mistral, Qwen2, GPT-2's `GPT2Block`, ...), so one config serves every family.

Defaults chosen for neuroflow's experts: `state_dict_type: full` (the `ExpertCollector` writes
the expert on rank 0 from the full state dict) and `use_orig_params: true` (LoRA mixes frozen and
trainable parameters inside one wrapped layer, which FSDP only accepts with original parameters).
"""

from __future__ import annotations

from typing import Any, Literal

from lightning.pytorch.strategies import FSDPStrategy
from torch import nn


def no_split_module_names(model: nn.Module) -> list[str]:
    """The layer class names the Hugging Face models inside `model` declare unsplittable."""
    names: list[str] = []
    for module in model.modules():
        for name in getattr(module, "_no_split_modules", None) or []:
            if name not in names:
                names.append(name)
    return names


def layer_classes(model: nn.Module, names: list[str] | None) -> set[type[nn.Module]]:
    """The classes of `model`'s modules whose class name is in `names` (None: `_no_split_modules`).

    Raises:
        ValueError: a name that matches no module, listing the layer classes the model has.
    """
    wanted = list(names) if names else no_split_module_names(model)
    found = {type(m) for m in model.modules() if type(m).__name__ in wanted}
    missing = [n for n in wanted if n not in {c.__name__ for c in found}]
    if missing or not found:
        candidates = sorted({type(m).__name__ for m in model.modules()
                             if type(m).__name__.endswith(("Layer", "Block"))})
        raise ValueError(
            f"strategy.wrap_layers: no module of class {missing or wanted} in the model; its layer classes: "
            f"{candidates}"
        )
    return found


class DecoderFSDPStrategy(FSDPStrategy):
    """Fully sharded data parallel over the model's decoder layers (one FSDP unit per layer).

    Args:
        wrap_layers: class names of the layers to shard as units, e.g. `[LlamaDecoderLayer]`;
            None = the model's `_no_split_modules`.
        checkpoint_layers: activation checkpointing of the same layers (recompute in backward).
        state_dict_type: `full` (checkpoints and the expert hold whole tensors, gathered on rank
            0; what the ExpertCollector needs) or `sharded` (one file per rank).
        sharding_strategy: FSDP's `FULL_SHARD`, `SHARD_GRAD_OP`, `NO_SHARD` or `HYBRID_SHARD`.
        cpu_offload: keep parameters and gradients in CPU memory between uses.
        use_orig_params: keep the original parameters visible (needed for LoRA's frozen and
            trainable parameters in one layer, and for per-parameter optimizer groups).
        **kwargs: other `FSDPStrategy` / `FullyShardedDataParallel` arguments.
    """

    def __init__(
        self,
        wrap_layers: list[str] | None = None,
        checkpoint_layers: bool = False,
        state_dict_type: Literal["full", "sharded"] = "full",
        sharding_strategy: Literal["FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD"] = "FULL_SHARD",
        cpu_offload: bool = False,
        use_orig_params: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(state_dict_type=state_dict_type, sharding_strategy=sharding_strategy,
                         cpu_offload=cpu_offload, use_orig_params=use_orig_params, **kwargs)
        self.wrap_layers = list(wrap_layers) if wrap_layers else None
        self.checkpoint_layers = checkpoint_layers

    def _setup_model(self, model: nn.Module) -> nn.Module:
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        classes = layer_classes(model, self.wrap_layers)
        self.kwargs["auto_wrap_policy"] = ModuleWrapPolicy(classes)
        if self.checkpoint_layers:
            self._activation_checkpointing_kwargs = {"auto_wrap_policy": ModuleWrapPolicy(classes)}
        if self.root_device.type != "cpu":
            return super()._setup_model(model)
        return self._setup_cpu_model(model)

    def _setup_cpu_model(self, model: nn.Module) -> nn.Module:
        # Lightning passes `device_id=None` on CPU, which FSDP refuses; with the CPU device named
        # explicitly FSDP runs on gloo, which is how the tests exercise this strategy without GPUs.
        import torch
        from lightning.fabric.strategies.fsdp import _move_torchmetrics_to_device, _setup_activation_checkpointing
        from torch.distributed.fsdp import FullyShardedDataParallel

        wrapped = FullyShardedDataParallel(
            module=model, cpu_offload=self.cpu_offload, mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy, device_id=torch.device("cpu"), **self.kwargs,
        )
        _move_torchmetrics_to_device(wrapped, self.root_device)
        _setup_activation_checkpointing(wrapped, self._activation_checkpointing_kwargs)
        return wrapped

    def _cpu_full_context(self) -> Any:
        # Lightning's full-state-dict context offloads to CPU, which crashes when the shards
        # already are on the CPU; gather without offloading there.
        from torch.distributed.fsdp import FullStateDictConfig, StateDictType
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp.api import FullOptimStateDictConfig

        return FSDP.state_dict_type(
            self.model, StateDictType.FULL_STATE_DICT, FullStateDictConfig(offload_to_cpu=False, rank0_only=True),
            FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=True),
        )

    def lightning_module_state_dict(self) -> dict[str, Any]:
        if self.root_device.type != "cpu" or self._state_dict_type != "full":
            return super().lightning_module_state_dict()
        with self._cpu_full_context():
            return self.model.state_dict()

    def optimizer_state(self, optimizer: Any) -> dict[str, Any]:
        if self.root_device.type != "cpu" or self._state_dict_type != "full":
            return super().optimizer_state(optimizer)
        from lightning.pytorch.core.optimizer import LightningOptimizer
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp import OptimStateKeyType

        optimizer = optimizer._optimizer if isinstance(optimizer, LightningOptimizer) else optimizer
        with self._cpu_full_context():
            state = FSDP.optim_state_dict(self.model, optimizer)
            if self.global_rank == 0:
                state = FSDP.rekey_optim_state_dict(state, OptimStateKeyType.PARAM_ID, self.model)
            return state
