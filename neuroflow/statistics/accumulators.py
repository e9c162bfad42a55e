"""The sums behind the statistics: Gram matrices of linear-layer inputs, squared per-example gradients.

Pure torch (no Lightning): `GramAccumulator` hooks every `nn.Linear` (and GPT-2 `Conv1D`) of a
model and adds `X^T X` of its inputs, padding rows left out; `FisherAccumulator` adds the squared
gradient of one example's log-likelihood, one example at a time. Both key their tensors by the
names `MultiTaskModule.backbone_state_dict()` uses, which are the names the merge reads.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

# Decoder modules of encoder-decoders read decoder positions, except the keys and values of
# cross-attention, which read the encoder's states (T5 `EncDecAttention.k/v`, BART `encoder_attn.k_proj/v_proj`).
_CROSS_KV = re.compile(r"(EncDecAttention\.[kv]|encoder_attn\.[kv]_proj)$")
_DECODER = re.compile(r"(^|\.)decoder\.")


def is_linear(module: nn.Module) -> bool:
    """`nn.Linear` or transformers' `Conv1D` (GPT-2's linear layer, weight stored `(in, out)`)."""
    if isinstance(module, nn.Linear):
        return True
    conv1d = getattr(sys.modules.get("transformers.pytorch_utils"), "Conv1D", None)
    return conv1d is not None and isinstance(module, conv1d)


def stream_of(module_name: str) -> str:
    """Which positions a linear layer reads: `decoder` (decoder tokens, incl. an LM head) or `encoder`.

    Args:
        module_name: the layer's name in the backbone.
    """
    if module_name == "lm_head" or (_DECODER.search(module_name) and not _CROSS_KV.search(module_name)):
        return "decoder"
    return "encoder"


def parameter_names(model: nn.Module, state: Mapping[str, Tensor]) -> dict[int, str]:
    """`id(parameter)` -> its key in `state` (a `backbone_state_dict()` sharing memory with `model`).

    Tied parameters map to the one key `state` keeps for them.
    """
    by_pointer = {(t.data_ptr(), tuple(t.shape)): name for name, t in state.items()}
    out = {}
    for _, param in model.named_parameters():
        key = by_pointer.get((param.data_ptr(), tuple(param.shape)))
        if key is not None:
            out[id(param)] = key
    return out


class GramAccumulator:
    """Sums `G = X^T X` of the inputs of every linear layer whose weight is a key of `state`.

    Inputs `(..., fan_in)` are flattened over batch and sequence; while a mask of the same leading
    shape is set (`capture(masks)`), only rows where it is non-zero count, so padding positions
    add nothing. Hooks record only inside `capture`, so other forwards of the model pass untouched.

    Args:
        model: the backbone (its modules are hooked).
        state: its `backbone_state_dict()` (plain names sharing memory with the parameters); a
            layer whose weight is kept there under another name (a tied alias, e.g. T5's
            `lm_head`) is left out, since the statistic would land on the other module's weight.
        dtype: accumulation dtype (float64: sums over many batches stay exact to float32 output).
    """

    def __init__(self, model: nn.Module, state: Mapping[str, Tensor], dtype: torch.dtype = torch.float64) -> None:
        self.dtype = dtype
        self.grams: dict[str, Tensor] = {}
        self.rows: dict[str, int] = {}
        self._masks: dict[str, Tensor] | None = None
        self._handles = []
        names = parameter_names(model, state)
        for module_name, module in model.named_modules():
            weight = getattr(module, "weight", None)
            if not is_linear(module) or weight is None or names.get(id(weight)) != f"{module_name}.weight":
                continue
            self._handles.append(module.register_forward_pre_hook(
                self._hook(names[id(weight)], stream_of(module_name)), with_kwargs=True))

    def _hook(self, key: str, stream: str) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if self._masks is None:
                return
            x = args[0] if args else next(iter(kwargs.values()))
            self.add(key, x, self._masks.get(stream))
        return hook

    def add(self, key: str, x: Tensor, mask: Tensor | None = None) -> None:
        """Add `X^T X` of the rows of `x` (`(..., fan_in)`) where `mask` (shape `x.shape[:-1]`) is set."""
        x = x.detach()
        if mask is not None and tuple(mask.shape) == tuple(x.shape[:-1]):
            rows = x[mask.to(torch.bool)]
        else:  # e.g. a pooler's (batch, hidden) input: every row is a real example
            rows = x.reshape(-1, x.shape[-1])
        # One float32 product per batch (fast everywhere), summed in `dtype` across batches.
        product = rows.float().T @ rows.float()
        if key in self.grams:
            self.grams[key] += product.to(self.dtype)
        else:
            self.grams[key] = product.to(self.dtype)
        self.rows[key] = self.rows.get(key, 0) + int(rows.shape[0])

    @contextmanager
    def capture(self, masks: Mapping[str, Tensor | None]) -> Iterator[None]:
        """Record the linear inputs of the forwards run inside the block.

        Args:
            masks: `encoder` -> the attention mask `(batch, seq)`; `decoder` -> the decoder
                positions that hold a target token (encoder-decoders); a missing or None mask
                counts every row.
        """
        self._masks = {k: v for k, v in masks.items() if v is not None}
        try:
            yield
        finally:
            self._masks = None

    def remove(self) -> None:
        """Unhook the model."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


class FisherAccumulator:
    """Sums `g^2` of per-example gradients `g = d log p(y | x) / d theta` of the listed parameters.

    Args:
        params: name -> parameter (each is made to require a gradient).
    """

    def __init__(self, params: Mapping[str, nn.Parameter]) -> None:
        self.names = list(params)
        self.params = [params[n] for n in self.names]
        for p in self.params:
            p.requires_grad_(True)
        self.sums = [torch.zeros(p.shape, dtype=torch.float32, device=p.device) for p in self.params]
        self.examples = 0

    def add(self, log_prob: Tensor, weight: float | Tensor = 1.0, retain_graph: bool = False) -> None:
        """Add `weight * g^2` for the gradient `g` of the scalar `log_prob` (parameters it does not
        reach get zero)."""
        grads = torch.autograd.grad(log_prob, self.params, allow_unused=True, retain_graph=retain_graph)
        for total, grad in zip(self.sums, grads):
            if grad is not None:
                grad = grad.float()
                # In place: no squared temporary of every (embedding-sized) gradient per example.
                total.addcmul_(grad, grad, value=float(weight))

    def add_classification(self, logits: Tensor, labels: str, generator: torch.Generator) -> None:
        """One example's Fisher from its class logits `(num_classes,)`.

        Args:
            logits: the model's logits for the example.
            labels: `sample` (one class drawn from the model's softmax, one backward pass) or
                `expected` (every class weighted by its probability: the exact Fisher of the
                model's predictive distribution, one backward pass per class).
            generator: CPU generator of the draws (seeded per expert: reproducible).
        """
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        probs = log_probs.detach().exp().cpu().double()
        if labels == "sample":
            y = int(torch.multinomial(probs, 1, generator=generator))
            self.add(log_probs[y])
        else:
            last = int(probs.numel()) - 1
            for c in range(last + 1):
                self.add(log_probs[c], float(probs[c]), retain_graph=c < last)
        self.examples += 1

    def mean(self) -> dict[str, Tensor]:
        """The diagonal Fisher: the sums divided by the number of examples."""
        n = max(self.examples, 1)
        return {name: total / n for name, total in zip(self.names, self.sums)}


def examples_of(batch: Mapping[str, object], keys: Sequence[str]) -> Iterator[dict[str, object]]:
    """The examples of a padded batch one at a time (trailing padding cut; position ids unchanged).

    Args:
        batch: a neuroflow batch (`input_ids`, `attention_mask`, ...; `task` kept as is).
        keys: the per-token tensors to cut to each example's length.
    """
    mask = batch.get("attention_mask")
    size = int(next(v for v in batch.values() if isinstance(v, Tensor)).shape[0])
    for j in range(size):
        example = {k: v[j:j + 1] if isinstance(v, Tensor) else v for k, v in batch.items()}
        if isinstance(mask, Tensor):
            valid = mask[j].nonzero()
            length = int(valid.max()) + 1 if valid.numel() else 1
            for key in keys:
                if isinstance(example.get(key), Tensor):
                    example[key] = example[key][:, :length]
        yield example
