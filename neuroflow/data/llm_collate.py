"""Batches of the causal-LM kinds, padded on the side each use needs.

- Training and teacher-forced loss: `input_ids`, `attention_mask`, `labels` right-padded (pad id,
  0, -100). Right padding keeps every real token at its natural position, so the model needs no
  position-id fix-up.
- Generation (instruction/generation evaluation): `prompt_input_ids` / `prompt_attention_mask`
  left-padded, so that every row's next token comes right after its prompt; `generate` derives the
  positions from the mask. `targets` holds the gold strings.
- Multiple choice (evaluation): one row per (example, choice), prompt + choice, right-padded:
  `choice_input_ids`, `choice_attention_mask`, `choice_labels` (-100 except on the choice tokens,
  which are scored), `choice_chars` (B x K character lengths), `label_index` (gold choice).
  Scoring reads only the positions of the real tokens, and causal attention never looks right,
  so right padding scores every choice exactly as it would be scored alone.

Every evaluation batch also carries `prompt_truncated` (B,), counted by the metrics.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from neuroflow.data.padding import LABEL_PAD, pad_sequences


def _mask(seqs: list[list[int]], side: str, multiple_of: int | None) -> torch.Tensor:
    return pad_sequences([[1] * len(s) for s in seqs], 0, side, multiple_of)


def collate_causal(
    cols: Mapping[str, Any], kind: str, pad_token_id: int, pad_to_multiple_of: int | None = None
) -> dict[str, Any]:
    """The tensors of one causal-LM batch (see the module docstring for the keys).

    Args:
        cols: the rows as columns (from `neuroflow.data.llm_encoding`).
        kind: `instruction`, `multiple_choice` or `generation`.
        pad_token_id: the tokenizer's pad id (its EOS when it had none).
        pad_to_multiple_of: round padded lengths up (tensor cores); None pads to the longest.
    """
    batch: dict[str, Any] = {}
    if "input_ids" in cols:
        ids = [list(x) for x in cols["input_ids"]]
        batch["input_ids"] = pad_sequences(ids, pad_token_id, "right", pad_to_multiple_of)
        batch["attention_mask"] = _mask(ids, "right", pad_to_multiple_of)
        batch["labels"] = pad_sequences(cols["labels"], LABEL_PAD, "right", pad_to_multiple_of)
    if "prompt_ids" not in cols:  # a training batch
        return batch
    batch["prompt_truncated"] = torch.as_tensor(cols["prompt_truncated"], dtype=torch.long)
    prompts = [list(x) for x in cols["prompt_ids"]]
    if kind != "multiple_choice":
        batch["prompt_input_ids"] = pad_sequences(prompts, pad_token_id, "left", pad_to_multiple_of)
        batch["prompt_attention_mask"] = _mask(prompts, "left", pad_to_multiple_of)
        batch["targets"] = list(cols["target"])
        return batch
    rows: list[list[int]] = []
    labels: list[list[int]] = []
    for prompt, choices in zip(prompts, cols["choice_ids"]):
        for choice in choices:
            rows.append(prompt + list(choice))
            labels.append([LABEL_PAD] * len(prompt) + list(choice))
    batch["choice_input_ids"] = pad_sequences(rows, pad_token_id, "right", pad_to_multiple_of)
    batch["choice_attention_mask"] = _mask(rows, "right", pad_to_multiple_of)
    batch["choice_labels"] = pad_sequences(labels, LABEL_PAD, "right", pad_to_multiple_of)
    batch["choice_chars"] = torch.as_tensor(cols["choice_chars"], dtype=torch.float32)
    batch["label_index"] = torch.as_tensor(cols["label"], dtype=torch.long)
    return batch
