"""Causal-LM batches: right padding for training and scoring, left padding for generation, one row
per (example, choice), and padding never counted in the loss even when the pad token is EOS."""

import torch

from neuroflow.data.collate import TaskCollator

PAD = 2  # = EOS, as for tokenizers without a pad token


def test_training_and_generation_padding_sides():
    cols = {"input_ids": [[1, 5, 6, 7, 2], [1, 8, 2]], "labels": [[-100, -100, 6, 7, 2], [-100, 8, 2]],
            "prompt_ids": [[1, 5], [1]], "target": ["six seven", "eight"], "prompt_truncated": [0, 1],
            "target_truncated": [0, 0]}
    batch = TaskCollator("gen", "generation", PAD)(cols)
    assert batch["input_ids"].tolist() == [[1, 5, 6, 7, 2], [1, 8, 2, PAD, PAD]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, -100, 6, 7, 2], [-100, 8, 2, -100, -100]]  # the real EOS keeps its label
    assert batch["prompt_input_ids"].tolist() == [[1, 5], [PAD, 1]]
    assert batch["prompt_attention_mask"].tolist() == [[1, 1], [0, 1]]
    assert batch["targets"] == ["six seven", "eight"] and batch["prompt_truncated"].tolist() == [0, 1]
    training = TaskCollator("gen", "generation", PAD)({k: cols[k] for k in ("input_ids", "labels")})
    assert set(training) == {"task", "input_ids", "attention_mask", "labels"}


def test_one_row_per_choice():
    cols = {"prompt_ids": [[1, 5], [1]], "choice_ids": [[[7], [8, 9]], [[7], [8, 9]]], "choice_chars": [[3, 5], [3, 5]],
            "label": [1, 0], "prompt_truncated": [0, 0], "target_truncated": [0, 0]}
    batch = TaskCollator("mc", "multiple_choice", PAD, pad_to_multiple_of=4)(cols)
    assert batch["choice_input_ids"].tolist() == [[1, 5, 7, PAD], [1, 5, 8, 9], [1, 7, PAD, PAD], [1, 8, 9, PAD]]
    assert batch["choice_labels"].tolist() == [[-100, -100, 7, -100], [-100, -100, 8, 9], [-100, 7, -100, -100],
                                               [-100, 8, 9, -100]]
    assert batch["choice_attention_mask"].sum(1).tolist() == [3, 4, 2, 3]
    assert torch.equal(batch["choice_chars"], torch.tensor([[3.0, 5.0], [3.0, 5.0]]))
    assert batch["label_index"].tolist() == [1, 0] and "input_ids" not in batch
