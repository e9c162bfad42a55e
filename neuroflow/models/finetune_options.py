"""Merge-friendly fine-tuning: which parameters train, and heads fitted before the backbone moves.

Heads trained jointly with the backbone from a random start pull the backbone towards
themselves; after a merge the backbone no longer matches any head. The remedies from the
literature are options of `MultiTaskModule`:
- `head_init: linear_probe`: fit each head on frozen backbone features first (one pass over the
  training data to cache the features, then a few full-batch epochs on the head alone), and
  `freeze_head: true` to keep it fixed while the backbone fine-tunes (LP-FT, Kumar et al. 2022);
- `trainable`: fine-tune only parameters whose names match (`attention` for the attention
  modules of every supported family, or glob patterns); works with LoRA too (only the adapters
  of matching modules train).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

# Attention modules across the families: BERT/ViT `attention.`, T5 `SelfAttention.` /
# `EncDecAttention.`, LLaMA/Mistral/Qwen2/CLIP `self_attn.`, GPT-2 `attn.`, BERT decoders `crossattention.`.
ATTENTION = re.compile(r"(^|\.)(attention|attn|self_attn|SelfAttention|EncDecAttention|crossattention)\.")
PRESETS = {"attention": ATTENTION}


def _matcher(patterns: str | Sequence[str]) -> tuple[list[str], Callable[[str], bool]]:
    items = [patterns] if isinstance(patterns, str) else list(patterns)
    if not items:
        raise ValueError("trainable: give `attention` or a non-empty list of parameter-name patterns")
    checks = []
    for item in items:
        if item in PRESETS:
            checks.append(PRESETS[item].search)
        else:
            checks.append(lambda name, glob=item: fnmatch.fnmatchcase(name, glob))
    return items, lambda name: any(check(name) for check in checks)


def restrict_trainable(backbone: nn.Module, patterns: str | Sequence[str]) -> list[str]:
    """Freeze every trainable backbone parameter whose name matches none of `patterns`.

    With a peft-wrapped backbone only adapter parameters are trainable to begin with, so this keeps
    the adapters of matching modules.

    Args:
        backbone: the (possibly peft-wrapped) backbone.
        patterns: `attention`, or glob patterns over parameter names (`*.attention.*`,
            `encoder.layer.1[01].*`), or a list mixing both.

    Returns:
        the names of the parameters left trainable.

    Raises:
        ValueError: no trainable parameter matches (names the patterns and shows example names).
    """
    items, matches = _matcher(patterns)
    trainable = [(n, p) for n, p in backbone.named_parameters() if p.requires_grad]
    kept = [n for n, _ in trainable if matches(n)]
    if not kept:
        examples = [n for n, _ in trainable[:6]]
        raise ValueError(f"trainable {items} matches no trainable backbone parameter; names look like {examples}")
    for name, param in trainable:
        if not matches(name):
            param.requires_grad_(False)
    return kept


def freeze(modules: Iterable[nn.Module]) -> None:
    """Stop gradients to these modules (the heads of LP-FT)."""
    for module in modules:
        module.requires_grad_(False)


def fit_linear_head(
    linear: nn.Linear,
    features: torch.Tensor,
    labels: torch.Tensor,
    epochs: int = 100,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
) -> float:
    """Fit a head's linear layer on cached features by full-batch AdamW (a linear probe).

    Deterministic for given features (no sampling), so every process of a DDP run that sees the
    same features ends with the same head.

    Args:
        linear: the head's layer (changed in place).
        features: pooled backbone features, `(N, hidden)`.
        labels: class indices, `(N,)`.
        epochs: full-batch steps.
        lr: learning rate of the probe.
        weight_decay: AdamW weight decay of the probe.

    Returns:
        the probe's final training loss.
    """
    if features.shape[0] == 0:
        raise ValueError("linear probe: no training features (the task's training split is empty)")
    features = features.to(linear.weight.dtype)
    # A frozen head (LP-FT) is still fitted here: its flags are restored afterwards.
    flags = [p.requires_grad for p in linear.parameters()]
    for p in linear.parameters():
        p.requires_grad_(True)
    try:
        return _probe(linear, features, labels, epochs, lr, weight_decay)
    finally:
        for p, flag in zip(linear.parameters(), flags):
            p.requires_grad_(flag)


def _probe(linear: nn.Linear, features: torch.Tensor, labels: torch.Tensor, epochs: int, lr: float,
           weight_decay: float) -> float:
    with torch.enable_grad():
        optimizer = torch.optim.AdamW(linear.parameters(), lr=lr, weight_decay=weight_decay)
        loss = torch.zeros(())
        for _ in range(epochs):
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(linear(features), labels)
            loss.backward()
            optimizer.step()
    return float(loss.detach())


def probe_features(module: nn.Module, batches: Iterable[dict], max_batches: int | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Pooled features and labels of every classification task in `batches`, computed by the
    frozen backbone (eval mode, no gradients), gathered from every process under DDP.

    Args:
        module: a `MultiTaskModule` (its `encode` and `heads`).
        batches: single-task training batches (each with `batch["task"]`).
        max_batches: stop after this many batches (None: one whole pass).
    """
    found: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
    was_training = module.training
    module.eval()
    with torch.no_grad():
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            task = batch["task"]
            if task not in module.heads:
                continue
            batch = {k: v.to(module.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            head = module.heads[task]
            pooled = head.pool(*module.encode(batch))
            feats, labels = found.setdefault(task, ([], []))
            feats.append(pooled.float().cpu())
            labels.append(batch["labels"].cpu())
    module.train(was_training)
    local = {t: (torch.cat(f), torch.cat(y)) for t, (f, y) in found.items()}
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Every rank fits the same probe on everyone's features, so the heads stay identical.
        gathered: list = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, local)
        merged: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        for part in gathered:
            for task, (f, y) in sorted(part.items()):
                merged.setdefault(task, ([], []))[0].append(f)
                merged[task][1].append(y)
        local = {t: (torch.cat(f), torch.cat(y)) for t, (f, y) in sorted(merged.items())}
    return local
