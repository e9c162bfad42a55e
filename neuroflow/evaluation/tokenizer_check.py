"""The evaluation data must be tokenized by the evaluated model's own tokenizer.

Experts of another base read token ids through the wrong embedding rows: a larger vocabulary
crashes the evaluation (`IndexError: index out of range in self`), one of the same size scores
garbage without a word. So the data's tokenizer is compared with the base's (vocabulary size and a
hash of the token -> id mapping) before any merge or evaluation work, and taken from the base when
the data names none.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from neuroflow.hub import resolve_model_path


class TokenizerMismatchError(ValueError):
    """The data's tokenizer is not the evaluated model's."""


def vocab_signature(tokenizer: Any) -> tuple[int, str]:
    """(vocabulary size with added tokens, `sha256:` hash of the sorted token -> id mapping)."""
    vocab = tokenizer.get_vocab()
    digest = hashlib.sha256(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode()).hexdigest()
    return len(vocab), f"sha256:{digest[:16]}"


def load_tokenizer(reference: str) -> Any | None:
    """The tokenizer saved with a model (path, hub id or `pkg://`), or None when it has none."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(resolve_model_path(reference))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _text_tasks(datamodule: Any) -> list[str]:
    specs = getattr(datamodule, "task_specs", None) or []
    return [s.name for s in specs if getattr(s, "kind", "") != "image_classification"]


def fill_or_check_tokenizer(datamodule: Any, base: str, owner: str) -> str | None:
    """Give `datamodule` the base's tokenizer when it names none; refuse one that differs.

    Args:
        datamodule: a `MultiTaskDataModule` (anything without `tokenizer_name` is left alone).
        base: the evaluated model's base (its backbone reference, where the tokenizer is saved).
        owner: what the base belongs to, for messages (e.g. "the experts' base").

    Returns:
        the tokenizer reference the data uses, or None when nothing was checked.

    Raises:
        TokenizerMismatchError: the data's tokenizer has another vocabulary than the base's; the
            message names both, with their sizes and hashes.
    """
    if datamodule is None or not hasattr(datamodule, "tokenizer_name") or not _text_tasks(datamodule):
        return None
    given = datamodule.tokenizer_name
    if not given:
        # The data module loads its tokenizer lazily, on first use: setting the name is enough.
        datamodule.tokenizer_name = base
        rank_zero_info(f"data.tokenizer: {base} ({owner})")
        return base
    if given == base or resolve_model_path(given) == resolve_model_path(base):
        return given
    expected = load_tokenizer(base)
    if expected is None:
        rank_zero_warn(f"{owner} {base!r} has no saved tokenizer: cannot check data.tokenizer {given!r}")
        return given
    got, want = vocab_signature(datamodule.tokenizer), vocab_signature(expected)
    if got != want:
        raise TokenizerMismatchError(
            f"data.tokenizer {given!r} (vocabulary {got[0]} tokens, {got[1]}) is not the tokenizer of "
            f"{owner} {base!r} (vocabulary {want[0]} tokens, {want[1]}): the model would read other "
            f"token ids than it was trained on. Set data.init_args.tokenizer to {base!r} (or leave it "
            f"unset where the data module allows, to use the model's own)"
        )
    return given
