"""Task heads: pooling -> dropout -> Linear."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

Pooling = Literal["cls", "mean", "pooler"]
POOLINGS = ("cls", "mean", "pooler")


class ClassificationHead(nn.Module):
    """Pools the backbone's token features into one vector and maps it to class logits.

    Args:
        hidden_size: width of the backbone features.
        num_labels: number of classes.
        pooling: `cls` (first token), `mean` (attention-masked mean over tokens) or `pooler` (the
            backbone's own `pooler_output`, e.g. BERT's tanh layer or ViT/CLIP pooling).
        dropout: dropout before the linear layer (training only).
    """

    def __init__(self, hidden_size: int, num_labels: int, pooling: str = "cls", dropout: float = 0.1):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; choose one of {list(POOLINGS)}")
        if num_labels < 1:
            raise ValueError(f"a classification head needs at least one label, got {num_labels}")
        self.hidden_size = hidden_size
        self.num_labels = num_labels
        self.pooling = pooling
        self.dropout_p = dropout
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(hidden_size, num_labels)

    def config(self) -> dict[str, Any]:
        """The constructor arguments, stored next to the saved weights."""
        return {
            "hidden_size": self.hidden_size,
            "num_labels": self.num_labels,
            "pooling": self.pooling,
            "dropout": self.dropout_p,
        }

    def pool(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pooler_output: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.pooling == "pooler":
            if pooler_output is None:
                raise ValueError(
                    "pooling 'pooler' needs a backbone that returns pooler_output; "
                    "use pooling 'cls' or 'mean'"
                )
            # CNN backbones return N x C x 1 x 1.
            return pooler_output.flatten(1)
        if hidden_states.dim() == 4:  # CNN feature map N x C x H x W
            return hidden_states.mean(dim=(2, 3))
        if self.pooling == "cls":
            return hidden_states[:, 0]
        if attention_mask is None:
            return hidden_states.mean(dim=1)
        mask = attention_mask.unsqueeze(-1).to(hidden_states.dtype)
        return (hidden_states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pooler_output: torch.Tensor | None = None,
    ) -> torch.Tensor:
        pooled = self.pool(hidden_states, attention_mask, pooler_output)
        return self.linear(self.dropout(pooled.to(self.linear.weight.dtype)))
