"""Tokenizing causal-LM tasks: prompt + target with the prompt masked, choices, truncation, packing.

Prompt and continuation are tokenized the way lm-evaluation-harness does it: trailing whitespace
of the prompt moves to the continuation, the pair is encoded as one string, and the continuation
is what follows the prompt's own tokens (so a tokenizer that merges across the boundary still
yields the tokens the model reads). A prompt that does not fit into `max_length` with its longest
continuation is truncated from the left (the tokenizer's leading special tokens, e.g. BOS, are
kept) and counted in `prompt_truncated`; continuations are capped at `max_target_length`.

Rows (`LABEL_PAD` = -100 marks tokens without loss):
- training (all three kinds): `input_ids` (prompt + target [+ EOS for instruction/generation]),
  `labels` (-100 on the prompt), `prompt_truncated`; multiple_choice trains on the gold choice.
- evaluation, instruction/generation: the same plus `prompt_ids` (for generation) and `target`.
- evaluation, multiple_choice: `prompt_ids`, `choice_ids` (one list per choice), `choice_chars`
  (the choices' lengths in characters, for `acc_norm`), `label`, `prompt_truncated`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from neuroflow.data.padding import LABEL_PAD
from neuroflow.data.task_spec import TaskSpec


def special_token_layout(tokenizer: Any) -> tuple[int, int]:
    """How many special tokens the tokenizer adds before and after a text (e.g. (1, 0) for BOS)."""
    plain = tokenizer("a b", add_special_tokens=False)["input_ids"]
    full = tokenizer("a b")["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return start, len(full) - start - len(plain)
    return 0, 0


def split_prompt(prompt: str, continuation: str) -> tuple[str, str]:
    """Move the prompt's trailing whitespace to the continuation (lm-eval's `_encode_pair`)."""
    stripped = prompt.rstrip()
    return stripped, prompt[len(stripped):] + continuation


def _encode_pairs(
    prompts: Sequence[str], continuations: Sequence[Sequence[str]], tokenizer: Any
) -> tuple[list[list[int]], list[list[list[int]]]]:
    """Prompt ids (with leading special tokens) and each continuation's ids, per row."""
    suffix = special_token_layout(tokenizer)[1]
    moved = [[split_prompt(p, c) for c in conts] for p, conts in zip(prompts, continuations)]
    # The prompt as the continuation sees it: whitespace moved out (same for every continuation).
    bare = [pairs[0][0] if pairs else p.rstrip() for p, pairs in zip(prompts, moved)]
    prompt_ids = tokenizer(bare)["input_ids"]
    wholes = [p + c for pairs in moved for p, c in pairs]
    whole_ids = tokenizer(wholes)["input_ids"] if wholes else []
    if suffix:
        prompt_ids = [ids[:-suffix] for ids in prompt_ids]
        whole_ids = [ids[:-suffix] for ids in whole_ids]
    out: list[list[list[int]]] = []
    k = 0
    for row, pairs in zip(prompt_ids, moved):
        conts = []
        for _, cont in pairs:
            whole = whole_ids[k]
            k += 1
            if whole[: len(row)] == row and len(whole) > len(row):
                conts.append(whole[len(row):])
            else:  # the boundary merged into the prompt's last token: encode the continuation alone
                conts.append(tokenizer(cont, add_special_tokens=False)["input_ids"])
        out.append(conts)
    return prompt_ids, out


def truncate_left(ids: list[int], budget: int, keep: int) -> tuple[list[int], bool]:
    """`ids` cut from the left to `budget` tokens, keeping the first `keep` (special tokens)."""
    if len(ids) <= budget:
        return ids, False
    keep = min(keep, max(budget - 1, 0))
    return ids[:keep] + ids[len(ids) - (budget - keep):], True


def encode_llm_batch(
    batch: dict[str, list[Any]],
    spec: TaskSpec,
    tokenizer: Any,
    max_length: int,
    max_target_length: int,
    training: bool,
) -> dict[str, list[Any]]:
    """Tokenize canonical causal-LM rows (`prompt`, `target` or `choices`, `label`)."""
    prompts = batch["prompt"]
    if spec.kind == "multiple_choice":
        texts = batch["choices"]
        if training:
            texts = [[choices[label]] for choices, label in zip(texts, batch["label"])]
    else:
        texts = [[t] for t in batch["target"]]
    continuations = [[spec.target_delimiter + t for t in row] for row in texts]
    prompt_ids, cont_ids = _encode_pairs(prompts, continuations, tokenizer)
    keep = special_token_layout(tokenizer)[0]
    eos = tokenizer.eos_token_id if spec.kind != "multiple_choice" else None
    out: dict[str, list[Any]] = {"prompt_truncated": [], "target_truncated": []}
    for name in (("input_ids", "labels") if training or spec.kind != "multiple_choice" else ()):
        out[name] = []
    if not training:
        out["prompt_ids"] = []
        if spec.kind == "multiple_choice":
            out.update(choice_ids=[], choice_chars=[], label=[])
        else:
            out["target"] = []
    for i, (prompt, conts) in enumerate(zip(prompt_ids, cont_ids)):
        capped = [c[:max_target_length] for c in conts]
        cut_target = any(len(c) > max_target_length for c in conts)
        if eos is not None:
            capped = [c + [eos] for c in capped]
        budget = max_length - max(len(c) for c in capped)
        ids, cut_prompt = truncate_left(prompt, budget, keep)
        out["prompt_truncated"].append(int(cut_prompt))
        out["target_truncated"].append(int(cut_target))
        if "input_ids" in out:
            target = capped[0]
            out["input_ids"].append(ids + target)
            out["labels"].append([LABEL_PAD] * len(ids) + target)
        if training:
            continue
        out["prompt_ids"].append(ids)
        if spec.kind == "multiple_choice":
            out["choice_ids"].append(capped)
            out["choice_chars"].append([len(c) for c in texts[i]])
            out["label"].append(int(batch["label"][i]))
        else:
            out["target"].append(batch["target"][i])
    return out


def pack_rows(batch: dict[str, list[Any]], max_length: int) -> dict[str, list[Any]]:
    """Greedily concatenate consecutive training rows into rows of at most `max_length` tokens.

    The loss mask travels with the tokens, so only target tokens count; `prompt_truncated` and
    `target_truncated` become the number of such examples in each packed row.
    """
    keys = ("input_ids", "labels", "prompt_truncated", "target_truncated")
    out: dict[str, list[Any]] = {k: [] for k in keys}
    current: dict[str, Any] = {"input_ids": [], "labels": [], "prompt_truncated": 0, "target_truncated": 0}
    for ids, labels, cut_p, cut_t in zip(*(batch[k] for k in keys)):
        if current["input_ids"] and len(current["input_ids"]) + len(ids) > max_length:
            for k in keys:
                out[k].append(current[k])
            current = {"input_ids": [], "labels": [], "prompt_truncated": 0, "target_truncated": 0}
        current["input_ids"] = current["input_ids"] + list(ids)
        current["labels"] = current["labels"] + list(labels)
        current["prompt_truncated"] += int(cut_p)
        current["target_truncated"] += int(cut_t)
    if current["input_ids"]:
        for k in keys:
            out[k].append(current[k])
    return out


def llm_cache_parts(spec: TaskSpec, split: str, tokenizer: Any) -> dict[str, Any]:
    """What else decides a causal-LM split's tokens (added to the tokenization cache key)."""
    return {
        "llm": 1,
        "training": split == "train",
        "template": spec.prompt_template,
        "target_column": spec.target_column,
        "delimiter": spec.target_delimiter,
        "choices": spec.choices,
        "targets": spec.targets,
        "packing": spec.packing and split == "train",
        "eos": tokenizer.eos_token_id,
    }
