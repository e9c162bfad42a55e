"""Padding token sequences into tensors (shared by every batch format)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

LABEL_PAD = -100  # ignored by cross-entropy, so padded target positions do not count


def pad_sequences(
    seqs: Sequence[Sequence[int]], value: int, side: str = "right", multiple_of: int | None = None
) -> torch.Tensor:
    """A LongTensor of the sequences padded to the longest (rounded up to `multiple_of`)."""
    length = max((len(s) for s in seqs), default=0)
    if multiple_of:
        length = -(-length // multiple_of) * multiple_of
    out = torch.full((len(seqs), length), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            if side == "left":
                out[i, length - len(s):] = torch.as_tensor(s, dtype=torch.long)
            else:
                out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out
