"""Tokenizing a task's split once, cached on disk across runs.

The cache file is named by a key over everything that changes the result: the split's content,
the task's text settings, the tokenizer (vocabulary and normalization, not just its name), and the
length limits, so different settings never share a file and unchanged ones always hit it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import datasets

from neuroflow.data.task_spec import TaskSpec

CACHE_VERSION = 1


def default_cache_dir() -> str:
    """`$NEUROFLOW_CACHE_DIR`, else `~/.cache/neuroflow`."""
    return os.environ.get("NEUROFLOW_CACHE_DIR") or str(Path.home() / ".cache" / "neuroflow")


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """SHA-256 of what decides a tokenizer's output: its serialized pipeline (fast tokenizers) or its
    vocabulary, class and special tokens."""
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # Truncation and padding are per-call state that the backend keeps from the last call.
        pipeline = json.loads(backend.to_str())
        pipeline.pop("truncation", None)
        pipeline.pop("padding", None)
        h.update(json.dumps(pipeline, sort_keys=True).encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    specials = {k: str(v) for k, v in sorted(getattr(tokenizer, "special_tokens_map", {}).items())}
    h.update(json.dumps([specials, getattr(tokenizer, "padding_side", None),
                         getattr(tokenizer, "truncation_side", None)]).encode())
    return h.hexdigest()


def content_fingerprint(ds: datasets.Dataset) -> str:
    """SHA-256 of a canonical text split's texts (prompts, targets, choices) and labels (one pass
    over the strings)."""
    h = hashlib.sha256()
    for column in ("text", "text_pair", "prompt", "target"):
        if column in ds.column_names:
            h.update(column.encode())
            h.update("\x1e".join(ds[column]).encode("utf-8", "surrogatepass"))
    if "choices" in ds.column_names:
        h.update(json.dumps(list(ds["choices"])).encode("utf-8", "surrogatepass"))
    h.update(json.dumps(list(map(int, ds["label"]))).encode())
    return h.hexdigest()


def format_inputs(spec: TaskSpec, texts: list[str], pairs: list[str] | None) -> tuple[list[str], list[str] | None]:
    """Apply the task's `input_template`; text2text joins a pair into one input string.

    Returns the first texts and the second texts for the tokenizer (None when there is no pair
    left to encode as a separate segment).
    """
    if spec.input_template:
        template = spec.input_template
        texts = [template.format(text=t, text_pair=p) for t, p in zip(texts, pairs or [""] * len(texts))]
        if "{text_pair}" in template:
            pairs = None
    if spec.kind == "text2text" and pairs is not None:
        texts, pairs = [f"{t} {p}" for t, p in zip(texts, pairs)], None
    return texts, pairs


def encode_batch(
    batch: dict[str, list[Any]], spec: TaskSpec, tokenizer: Any, max_length: int, max_target_length: int
) -> dict[str, list[Any]]:
    """Tokenize a batch of canonical rows into model inputs (see the batch format in the docs)."""
    texts, pairs = format_inputs(spec, batch["text"], batch.get("text_pair"))
    enc = tokenizer(texts, pairs, truncation=True, max_length=max_length)
    out = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
    if spec.kind == "text2text":
        targets = spec.targets
        out["labels"] = tokenizer(
            text_target=[targets[i] for i in batch["label"]], truncation=True, max_length=max_target_length
        )["input_ids"]
        out["label_index"] = list(batch["label"])
    else:
        out["labels"] = list(batch["label"])
    return out


def encode_split(
    ds: datasets.Dataset,
    spec: TaskSpec,
    split: str,
    tokenizer: Any,
    max_length: int,
    max_target_length: int,
    cache_dir: str | None = None,
) -> datasets.Dataset:
    """The tokenized split, read from the on-disk cache when the same work was done before.

    Args:
        ds: the canonical split (`text`, optional `text_pair`, `label`).
        spec: the task (template, verbalizer, kind).
        split: split name, part of the cache file name.
        tokenizer: a Hugging Face tokenizer.
        max_length: input truncation length.
        max_target_length: target truncation length (text2text).
        cache_dir: cache root (default `default_cache_dir()`).
    """
    if spec.is_llm:
        return _encode_llm_split(ds, spec, split, tokenizer, max_length, max_target_length, cache_dir)
    key_parts = {
        "version": CACHE_VERSION,
        "task": spec.name,
        "kind": spec.kind,
        "template": spec.input_template,
        "targets": spec.targets if spec.kind == "text2text" else None,
        "content": content_fingerprint(ds),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "max_length": max_length,
        "max_target_length": max_target_length if spec.kind == "text2text" else None,
    }
    fn_kwargs = {"spec": spec, "tokenizer": tokenizer, "max_length": max_length, "max_target_length": max_target_length}
    return _cached_map(ds, encode_batch, fn_kwargs, key_parts, spec.name, split, cache_dir)


def _cached_map(
    ds: datasets.Dataset,
    fn: Any,
    fn_kwargs: dict[str, Any],
    key_parts: dict[str, Any],
    task: str,
    split: str,
    cache_dir: str | None,
    tag: str = "",
) -> datasets.Dataset:
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:24]
    folder = Path(cache_dir or default_cache_dir()) / "tokenized" / task
    folder.mkdir(parents=True, exist_ok=True)
    return ds.map(
        fn,
        batched=True,
        fn_kwargs=fn_kwargs,
        remove_columns=ds.column_names,
        cache_file_name=str(folder / f"{split}{tag}-{key}.arrow"),
        load_from_cache_file=True,
        new_fingerprint=key,
        desc=f"{tag.strip('-') or 'tokenize'} {task}/{split}",
    )


def _encode_llm_split(
    ds: datasets.Dataset,
    spec: TaskSpec,
    split: str,
    tokenizer: Any,
    max_length: int,
    max_target_length: int,
    cache_dir: str | None,
) -> datasets.Dataset:
    """`encode_split` for the causal-LM kinds (`neuroflow.data.llm_encoding`), packed when asked."""
    from neuroflow.data.llm_encoding import encode_llm_batch, llm_cache_parts, pack_rows

    key_parts = {
        "version": CACHE_VERSION,
        "task": spec.name,
        "kind": spec.kind,
        "content": content_fingerprint(ds),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "max_length": max_length,
        "max_target_length": max_target_length,
        **llm_cache_parts(spec, split, tokenizer),
    }
    training = split == "train"
    fn_kwargs = {"spec": spec, "tokenizer": tokenizer, "max_length": max_length,
                 "max_target_length": max_target_length, "training": training}
    encoded = _cached_map(ds, encode_llm_batch, fn_kwargs, key_parts, spec.name, split, cache_dir)
    if training and spec.packing:
        encoded = _cached_map(encoded, pack_rows, {"max_length": max_length}, {**key_parts, "packed": True},
                              spec.name, split, cache_dir, tag="-pack")
    return encoded
