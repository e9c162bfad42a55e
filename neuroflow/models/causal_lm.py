"""The `causal_lm` family: LoRA targets per architecture, gradient checkpointing, the tokenizer,
and the two forward passes every causal-LM kind is built from (the training loss, and the summed
log-probability of the labelled tokens of each row)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from neuroflow.data.collate import LABEL_PAD

# Every projection of attention and MLP: what LoRA fine-tunes of these families usually adapt.
_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA_TARGETS: dict[str, list[str]] = {
    **{t: _PROJECTIONS for t in ("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2",
                                 "olmo", "olmo2", "granite", "smollm3")},
    "gpt2": ["c_attn", "c_proj", "c_fc"],  # Conv1D layers: weights stored (in, out)
}


def _has_conv1d(model: nn.Module, targets: Any) -> bool:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover
        return False
    if not isinstance(targets, (list, tuple, set)):
        return any(isinstance(m, Conv1D) for m in model.modules())
    names = set(targets)
    return any(isinstance(m, Conv1D) and n.rsplit(".", 1)[-1] in names for n, m in model.named_modules())


def causal_lora_config(model: nn.Module, lora: dict[str, Any]) -> dict[str, Any]:
    """The LoraConfig arguments for a causal LM: the user's, completed per architecture.

    `target_modules` defaults to the family's projections (LLaMA/Mistral/Qwen2: q/k/v/o and the
    gate/up/down MLP projections; GPT-2: `c_attn`, `c_proj`, `c_fc`; other models: peft's
    `all-linear`); `fan_in_fan_out` is set for GPT-2's `Conv1D` layers and `task_type` to
    `CAUSAL_LM` unless given. Everything the user sets wins.

    Args:
        model: the causal LM, before peft wraps it.
        lora: the user's LoraConfig arguments.
    """
    if not isinstance(lora, dict):
        raise ValueError(f"lora must be a mapping of LoraConfig arguments, got {type(lora).__name__}")
    out = dict(lora)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if out.get("target_modules") is None:
        out["target_modules"] = list(LORA_TARGETS.get(model_type, [])) or "all-linear"
    if "fan_in_fan_out" not in out and _has_conv1d(model, out["target_modules"]):
        out["fan_in_fan_out"] = True
    out.setdefault("task_type", "CAUSAL_LM")
    return out


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute activations in the backward pass (non-reentrant, so frozen inputs under LoRA
    still get gradients) and turn the KV cache off for training forwards."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ValueError(f"gradient_checkpointing: {type(model).__name__} does not support it")
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 (the old name warns)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:  # pragma: no cover - transformers 4
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if getattr(model, "config", None) is not None:
        model.config.use_cache = False


def load_lm_tokenizer(path: str, tasks: list[str], model: nn.Module) -> Any:
    """The tokenizer that decodes generations, with a pad token (its EOS when it has none).

    Raises:
        ValueError: the tokenizer has ids the model's embeddings do not have (e.g. a pad token the
            tokenizer class added on loading), which would fail inside the first forward.
    """
    from transformers import AutoTokenizer

    from neuroflow.data.pad_token import ensure_pad_token
    from neuroflow.hub import resolve_model_path

    tokenizer = ensure_pad_token(AutoTokenizer.from_pretrained(resolve_model_path(path)), tasks,
                                 where="model tokenizer")
    rows = model.get_input_embeddings().num_embeddings
    ids = {n: getattr(tokenizer, f"{n}_token_id") for n in ("pad", "eos", "bos")}
    outside = {n: i for n, i in ids.items() if i is not None and i >= rows}
    if outside:
        raise ValueError(
            f"tasks {tasks}: tokenizer {path!r} has special token ids {outside} beyond the model's {rows} "
            "embedding rows; use the model's own tokenizer (`text2text_tokenizer`, `data.tokenizer`)"
        )
    return tokenizer


def causal_loss(model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """Mean next-token cross-entropy over the target tokens (`labels` != -100) of a batch.

    The model's own loss (Hugging Face shifts the labels); prompt tokens carry -100, so only the
    answer is learned.
    """
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                 use_cache=False).loss


def labelled_logprobs(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row: the summed log-probability of its labelled tokens given the tokens before them,
    the number of labelled tokens, and whether any of their logits was NaN/Inf.

    Only the labelled positions are taken out of the logits before the float32 log-softmax, so a
    long prompt costs no vocabulary-sized float32 copy per prompt token.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    targets = labels[:, 1:]
    rows, cols = (targets != LABEL_PAD).nonzero(as_tuple=True)
    picked = logits[:, :-1][rows, cols].float()
    token_logp = torch.log_softmax(picked, dim=-1).gather(-1, targets[rows, cols].unsqueeze(-1)).squeeze(-1)
    n = input_ids.shape[0]
    sums = torch.zeros(n, dtype=torch.float32, device=logits.device).index_add_(0, rows, token_logp)
    counts = torch.zeros(n, dtype=torch.long, device=logits.device).index_add_(0, rows, torch.ones_like(rows))
    bad = (~torch.isfinite(picked)).any(dim=-1).long()
    nonfinite = torch.zeros(n, dtype=torch.long, device=logits.device).index_add_(0, rows, bad) > 0
    return sums, counts, nonfinite
