"""A `MultiTaskModule`'s weights read from a gathered full state dict, for sharded fits.

Under FSDP (or DeepSpeed ZeRO-3, ModelParallel) no process holds whole parameters, so neither
`backbone_state_dict()` nor peft's `save_pretrained` can read the module itself. Rank 0 instead
receives the full state dict (a full-state-dict checkpoint, or
`strategy.lightning_module_state_dict()`), and `GatheredModule` answers what `save_expert` asks
of a module from it: the plain backbone weights, the heads, and the LoRA adapter.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from neuroflow.models.heads import ClassificationHead

_ADAPTER_KEY = re.compile(r"\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector|modules_to_save)\.")


def is_sharded_strategy(strategy: Any) -> bool:
    """Whether `strategy` shards parameters across processes (then the module's own tensors are
    shards and the expert must come from a gathered state dict)."""
    names = {cls.__name__ for cls in type(strategy).__mro__}
    return bool(names & {"FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy"})


class _GatheredBackbone:
    """What `save_expert` calls on `module.backbone`: writes the adapter as peft's `save_pretrained`
    does (`adapter_config.json` + `adapter_model.safetensors`, adapter name dropped from the keys).

    peft's own `save_pretrained(state_dict=...)` cannot be used: it picks the adapter tensors by the
    live module names, which FSDP prefixes with `_fsdp_wrapped_module.`, and then saves nothing.
    """

    def __init__(self, backbone: nn.Module, state: dict[str, torch.Tensor]) -> None:
        self._backbone, self._state = backbone, state

    def save_pretrained(self, path: str) -> None:
        import copy
        from pathlib import Path

        from safetensors.torch import save_file

        (name, config), = self._backbone.peft_config.items()
        if getattr(config, "bias", "none") != "none":
            raise ValueError(f"saving a LoRA adapter with bias={config.bias!r} from a sharded fit is not supported")
        tensors = {}
        for key, value in self._state.items():
            if not _ADAPTER_KEY.search(key):
                continue
            key = key.replace(f".{name}.", ".").removesuffix(f".{name}")
            if key.endswith("lora_magnitude_vector.weight"):  # peft's DoRA key format
                key = key.removesuffix(".weight")
            tensors[key] = value.detach().cpu().contiguous()
        if not tensors:
            raise ValueError("the gathered state dict holds no LoRA adapter tensors")
        Path(path).mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(Path(path) / "adapter_model.safetensors"), metadata={"format": "pt"})
        config = copy.deepcopy(config)
        config.inference_mode = True
        config.save_pretrained(path)


class GatheredModule:
    """The parts of a `MultiTaskModule` that `save_expert` reads, backed by a full state dict.

    Args:
        module: the (sharded) module: task specs, hyper-parameters, family and peft config.
        state: its full `state_dict()` (LightningModule keys), gathered on this process.
        state_keys: plain backbone name -> key in `state` (`module.backbone_state_keys()`, taken
            before the strategy wrapped the module); None = ask the module now.
    """

    def __init__(self, module: Any, state: dict[str, torch.Tensor], state_keys: dict[str, str] | None = None) -> None:
        self._module = module
        self._state = state
        self._keys = state_keys if state_keys is not None else module.backbone_state_keys()
        missing = [k for k in self._keys.values() if k not in state]
        if missing:
            raise ValueError(f"the gathered state dict lacks backbone weights {missing[:5]} "
                             f"({len(missing)} in all); was it saved with a full state dict?")
        self.task_names = list(module.task_names)
        self.task_specs = module.task_specs
        self.hparams = module.hparams
        self.family = module.family
        backbone_state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
        self.backbone = _GatheredBackbone(module.backbone, backbone_state)
        self.heads = nn.ModuleDict()
        for task, head in module.heads.items():
            fresh = ClassificationHead(**head.config())
            prefix = f"heads.{task}."
            fresh.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
            self.heads[task] = fresh

    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        """Plain-named backbone weights, as `MultiTaskModule.backbone_state_dict()` names them."""
        return {plain: self._state[key].detach() for plain, key in self._keys.items()}
