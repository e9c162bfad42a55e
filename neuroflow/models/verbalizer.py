"""Text-to-text classification: generated strings back to class indices."""

from __future__ import annotations

import re
from typing import Any


def normalize_answer(text: str) -> str:
    """Lower-case, strip, and collapse whitespace (what tokenizer round trips may change)."""
    return re.sub(r"\s+", " ", text).strip().lower()


class Verbalizer:
    """Maps a task's target strings to class indices; anything else is -1 (counted as wrong).

    Args:
        task: the task name (error messages).
        targets: the target string of each class, in label-index order.
        tokenizer: the seq2seq tokenizer; used to check that every target survives an
            encode/decode round trip (otherwise that class could never be predicted).
    """

    def __init__(self, task: str, targets: list[str], tokenizer: Any) -> None:
        self.task = task
        self.targets = list(targets)
        self.index = {normalize_answer(t): i for i, t in enumerate(self.targets)}
        if len(self.index) != len(self.targets):
            raise ValueError(f"task {task!r}: targets {self.targets} are not distinct after normalization")
        self.target_lengths = []
        for target in self.targets:
            ids = tokenizer(target, add_special_tokens=True)["input_ids"]
            back = tokenizer.decode(ids, skip_special_tokens=True)
            if normalize_answer(back) != normalize_answer(target):
                raise ValueError(
                    f"task {task!r}: target {target!r} does not survive the tokenizer round trip "
                    f"(decodes to {back!r}); choose a `verbalizer` the tokenizer can spell"
                )
            self.target_lengths.append(len(ids))
        self.tokenizer = tokenizer

    @property
    def max_target_tokens(self) -> int:
        return max(self.target_lengths)

    def to_index(self, texts: list[str]) -> list[int]:
        return [self.index.get(normalize_answer(t), -1) for t in texts]

    def decode(self, token_ids: Any) -> list[int]:
        """Class index of each generated sequence (-1 when it matches no target)."""
        return self.to_index(self.tokenizer.batch_decode(token_ids, skip_special_tokens=True))
