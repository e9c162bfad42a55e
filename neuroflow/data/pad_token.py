"""Tokenizers without a pad token (LLaMA, Mistral, GPT-2): pad with EOS, and say so once."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.utilities import rank_zero_warn

# (tokenizer name, pad token) pairs already reported in this process: the DataModule and the model
# both load the tokenizer, and one warning is enough.
_REPORTED: set[tuple[str, str]] = set()


def ensure_pad_token(tokenizer: Any, tasks: list[str], where: str = "data.tokenizer") -> Any:
    """Give `tokenizer` a pad token (its EOS) when it has none, warning once per tokenizer.

    Padded positions never carry loss (labels are -100 there, set from the lengths, not from the
    pad id), so padding with EOS does not teach the model anything about EOS.

    Args:
        tokenizer: a Hugging Face tokenizer (changed in place).
        tasks: the causal-LM tasks that need padding (named in the warning).
        where: the config key the tokenizer comes from (named in messages).

    Raises:
        ValueError: the tokenizer has neither a pad nor an EOS token.
    """
    if tokenizer.pad_token is not None:
        return tokenizer
    name = str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)
    if tokenizer.eos_token is None:
        raise ValueError(
            f"{where} {name!r} has no pad token and no EOS token, which tasks {tasks} need for padding; "
            "add one to the tokenizer (tokenizer.add_special_tokens({'pad_token': ...}))"
        )
    tokenizer.pad_token = tokenizer.eos_token
    key = (name, str(tokenizer.eos_token))
    if key not in _REPORTED:
        _REPORTED.add(key)
        rank_zero_warn(
            f"{where} {name!r} has no pad token; padding the batches of tasks {tasks} with its EOS token "
            f"{tokenizer.eos_token!r} (padded positions are masked out of the loss)"
        )
    return tokenizer
