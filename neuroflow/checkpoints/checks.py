"""Checks that experts fit their base, from headers and small files only (seconds, no tensor read).

Every expert must have the base's architecture (`config.json` `model_type`/`architectures`) and
every tensor the base merges, with its shape and dtype family. The first problem is raised as a
`CheckpointError` naming the tensor, the expert and both shapes. A resized vocabulary (embedding /
LM-head rows differ) is refused with that explanation unless `vocab="shared_rows"`: the base's rows
are merged and each extra row is kept from the one expert that added it. Tokenizers that differ are
reported (warnings recorded in the model card), not refused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from neuroflow.checkpoints.adapter import AdapterExpert
from neuroflow.checkpoints.errors import CheckpointError
from neuroflow.merging.routing import matches

VOCAB_POLICIES = ("refuse", "shared_rows")
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer.model", "vocab.txt", "vocab.json", "merges.txt", "spiece.model",
    "added_tokens.json", "special_tokens_map.json",
)
_VOCAB_NAME_HINTS = ("embed", "lm_head", "wte", "word_embeddings", "shared.weight")


class Headers(Protocol):
    """What the checks read of a checkpoint: names, shapes/dtypes, config, folder."""

    path: Path
    config: dict[str, Any]

    def __iter__(self): ...

    def __contains__(self, name: object) -> bool: ...

    def meta(self, name: str) -> tuple[tuple[int, ...], torch.dtype]: ...


@dataclass
class CheckReport:
    """What the checks found that the merge must honour.

    Attributes:
        warnings: differences that do not stop the merge (tokenizers), for logs and the card.
        rows: tensor name -> rows merged (the base's vocabulary size) under `shared_rows`.
        extra_rows: tensor name -> (expert index, output rows): rows beyond the base's are copied
            from that expert.
        vocab: what `shared_rows` did, for the model card (None when nothing was resized).
        tokenizer_from: the expert index whose tokenizer belongs to the output (added tokens).
    """

    warnings: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)
    extra_rows: dict[str, tuple[int, int]] = field(default_factory=dict)
    vocab: dict[str, Any] | None = None
    tokenizer_from: int | None = None


def file_hash(path: Path) -> str:
    """SHA-256 of a (small) file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tokenizer_hashes(folder: Path) -> dict[str, str]:
    """File name -> SHA-256 of the tokenizer files present in `folder`."""
    return {name: file_hash(folder / name) for name in TOKENIZER_FILES if (folder / name).is_file()}


def check_architecture(base: Headers, expert: Headers, label: str) -> None:
    """Refuse an expert whose `config.json` names another architecture than the base's.

    Args:
        base: the base checkpoint.
        expert: a full fine-tune.
        label: how the message names the expert.
    """
    for key in ("model_type", "architectures"):
        ours, theirs = base.config.get(key), expert.config.get(key)
        if ours is not None and theirs is not None and ours != theirs:
            raise CheckpointError(
                f"{label}: {expert.path / 'config.json'} has {key} {theirs!r}, the base "
                f"({base.path}) has {ours!r}: a different architecture cannot be merged"
            )


def _is_vocab_tensor(name: str, base_shape: tuple[int, ...], shape: tuple[int, ...], vocab_size: Any) -> bool:
    if len(shape) != len(base_shape) or len(shape) == 0 or shape[1:] != base_shape[1:] or shape[0] == base_shape[0]:
        return False
    if isinstance(vocab_size, int):
        return base_shape[0] == vocab_size
    return any(hint in name for hint in _VOCAB_NAME_HINTS)


def check_experts(
    base: Headers,
    experts: Sequence[Headers | AdapterExpert],
    labels: Sequence[str],
    vocab: str = "refuse",
    merged: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> CheckReport:
    """Check every expert against the base before anything heavy; raise on the first mismatch.

    Args:
        base: the base checkpoint (a `CheckpointFolder` or header view).
        experts: full fine-tunes (header views) and adapters (already checked against the base
            when they were opened).
        labels: how messages name each expert (path or hub id).
        vocab: "refuse" (a resized vocabulary is an error) or "shared_rows".
        merged: the base tensor names that are merged (default: every floating-point tensor not
            matching `exclude`).
        exclude: glob patterns of tensors that are not merged (an expert may lack them or carry
            extra ones, e.g. a task head).

    Raises:
        CheckpointError: architecture, missing/extra tensor, shape, dtype family or vocabulary.
    """
    if vocab not in VOCAB_POLICIES:
        raise CheckpointError(f"vocab must be one of {', '.join(VOCAB_POLICIES)}, got {vocab!r}")
    report = CheckReport()
    names = list(base)
    if merged is None:
        merged = [n for n in names if base.meta(n)[1].is_floating_point and not matches(n, exclude)]
    base_vocab = base.config.get("vocab_size")
    grown: dict[str, dict[int, int]] = {}  # tensor -> expert index -> rows
    for i, (expert, label) in enumerate(zip(experts, labels)):
        if isinstance(expert, AdapterExpert):
            continue
        check_architecture(base, expert, label)
        for name in merged:
            if name not in expert:
                raise CheckpointError(f"{label}: tensor {name!r} of the base is missing from {expert.path}")
            base_shape, base_dtype = base.meta(name)
            shape, dtype = expert.meta(name)
            if dtype.is_floating_point != base_dtype.is_floating_point:
                raise CheckpointError(
                    f"{label}: tensor {name!r} in {expert.file_of(name) if hasattr(expert, 'file_of') else expert.path} "
                    f"has dtype {dtype}, the base has {base_dtype}"
                )
            if tuple(shape) == tuple(base_shape):
                continue
            where = expert.file_of(name) if hasattr(expert, "file_of") else expert.path
            if not _is_vocab_tensor(name, tuple(base_shape), tuple(shape), base_vocab):
                raise CheckpointError(
                    f"{label}: tensor {name!r} in {where} has shape {tuple(shape)}, the base has {tuple(base_shape)}"
                )
            if vocab == "refuse":
                raise CheckpointError(
                    f"{label}: tensor {name!r} in {where} has {shape[0]} rows, the base has {base_shape[0]}: the "
                    "vocabulary was resized (tokens added or removed), so rows no longer mean the same token; "
                    "merge with vocab: shared_rows to merge the base's rows and keep each extra row from the "
                    "expert that added it"
                )
            if shape[0] < base_shape[0]:
                raise CheckpointError(
                    f"{label}: tensor {name!r} in {where} has {shape[0]} rows, fewer than the base's {base_shape[0]}: "
                    "shared_rows only handles experts that added tokens"
                )
            grown.setdefault(name, {})[i] = shape[0]
        extra = [n for n in expert if n not in base and not matches(n, exclude)]
        if extra:
            raise CheckpointError(
                f"{label}: {expert.path} has tensor {extra[0]!r} that the base does not have"
                + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
            )
    _plan_shared_rows(base, grown, labels, report)
    _compare_tokenizers(base, experts, labels, report)
    return report


def _plan_shared_rows(base: Headers, grown: dict[str, dict[int, int]], labels: Sequence[str], report: CheckReport) -> None:
    if not grown:
        return
    owners = {i for by_expert in grown.values() for i in by_expert}
    if len(owners) > 1:
        who = ", ".join(labels[i] for i in sorted(owners))
        raise CheckpointError(
            f"vocab shared_rows: several experts added tokens ({who}); their extra rows need not be the "
            "same tokens, so no row can be kept from 'the expert that added it'"
        )
    (owner,) = owners
    for name, by_expert in grown.items():
        report.rows[name] = base.meta(name)[0][0]
        report.extra_rows[name] = (owner, by_expert[owner])
    rows = sorted({r for r in grown[next(iter(grown))].values()})
    report.tokenizer_from = owner
    report.vocab = {
        "policy": "shared_rows",
        "base_rows": base.meta(next(iter(grown)))[0][0],
        "output_rows": rows[-1],
        "extra_rows_from": labels[owner],
        "tensors": sorted(grown),
    }


def _compare_tokenizers(base: Headers, experts: Sequence[Headers | AdapterExpert], labels: Sequence[str], report: CheckReport) -> None:
    ours = tokenizer_hashes(base.path)
    for expert, label in zip(experts, labels):
        theirs = tokenizer_hashes(expert.path)
        differ = sorted(n for n in set(ours) & set(theirs) if ours[n] != theirs[n])
        if differ:
            report.warnings.append(f"{label}: tokenizer differs from the base's ({', '.join(differ)})")
