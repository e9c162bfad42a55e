"""Grouping tensor names into layers, the rows of every per-layer table and heatmap.

A transformer's state dict names each block's tensors under a container and an index:
`encoder.layer.3.` (BERT, MiniLM, transformers-4 ViT), `layers.3.` (transformers-5 ViT),
`encoder.block.3.` / `decoder.block.3.` (T5), `vision_model.encoder.layers.3.` (CLIP, also
BART/OPT `layers.N`), `model.layers.3.` (LLaMA, Mistral, Qwen), `h.3.` / `transformer.h.3.`
(GPT-2, BLOOM), `blocks.3.` (MPT, timm). The group of a tensor is its name up to and including the
first such index, so encoder and decoder blocks stay apart and nested indices (T5's
`block.3.layer.0.`) do not split a block. Tensors outside every block form two groups:
`embeddings` (any name part mentioning an embedding, `wte`/`wpe`, or T5's `shared`) and `other`
(poolers, final norms, output projections).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

EMBEDDINGS = "embeddings"
OTHER = "other"

# A block container followed by its index, as a whole name part (leftmost match wins).
_BLOCK = re.compile(r"(?:^|\.)(?:layers?|blocks?|h)\.(\d+)(?=\.|$)")
_EMBEDDING_PART = re.compile(r"embed|^wte$|^wpe$|^shared$")


def layer_of(name: str) -> str:
    """The layer group of a tensor name.

    Args:
        name: a state-dict key, e.g. `encoder.layer.3.attention.self.query.weight`.

    Returns:
        the name's prefix through its first block index (`encoder.layer.3`, `decoder.block.0`,
        `model.layers.31`, `h.11`), else `embeddings` or `other`.

    Examples:
        >>> layer_of("encoder.block.2.layer.1.DenseReluDense.wi.weight")
        'encoder.block.2'
        >>> layer_of("transformer.wte.weight"), layer_of("pooler.dense.weight")
        ('embeddings', 'other')
    """
    match = _BLOCK.search(name)
    if match is not None:
        return name[: match.end()].lstrip(".")
    if any(_EMBEDDING_PART.search(part) for part in name.split(".")):
        return EMBEDDINGS
    return OTHER


def layer_index(group: str) -> int | None:
    """The block index of a layer group (None for `embeddings` and `other`).

    Args:
        group: a group from `layer_of`.
    """
    if group in (EMBEDDINGS, OTHER):
        return None
    return int(group.rsplit(".", 1)[1])


def order_layers(groups: Iterable[str]) -> list[str]:
    """Distinct groups in reading order: `embeddings`, then the blocks of each stack (stacks in
    order of first appearance, e.g. encoder before decoder; indices numerically, 10 after 9),
    then `other`.

    Args:
        groups: layer groups, typically `layer_of` of every tensor in state-dict order.
    """
    stacks: dict[str, int] = {}
    blocks: set[str] = set()
    specials: set[str] = set()
    for group in groups:
        index = layer_index(group)
        if index is None:
            specials.add(group)
            continue
        blocks.add(group)
        stacks.setdefault(group.rsplit(".", 1)[0], len(stacks))
    ordered = sorted(blocks, key=lambda g: (stacks[g.rsplit(".", 1)[0]], layer_index(g)))
    return ([EMBEDDINGS] if EMBEDDINGS in specials else []) + ordered + ([OTHER] if OTHER in specials else [])


def short_layer_name(group: str) -> str:
    """A compact label for plot axes: wrappers and a container that follows a stack name are
    dropped, `encoder`/`decoder` abbreviated (`encoder.layer.3` -> `enc.3`, `decoder.block.0` ->
    `dec.0`, `vision_model.encoder.layers.3` -> `vision.enc.3`, `model.layers.7` -> `layers.7`,
    `transformer.h.11` -> `h.11`).

    Args:
        group: a group from `layer_of`.
    """
    index = layer_index(group)
    if index is None:
        return group
    parts = group.split(".")[:-1]
    stack = [p for p in parts if p not in ("model", "transformer", "base_model")]
    if len(stack) > 1 and stack[-1] in ("layer", "layers", "block", "blocks", "h"):
        stack = stack[:-1]  # `encoder.layer` says no more than `encoder`
    label = ".".join(stack) or parts[-1]
    label = label.replace("encoder", "enc").replace("decoder", "dec").replace("_model", "")
    return f"{label}.{index}"
