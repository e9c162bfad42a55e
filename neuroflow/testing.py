"""Tiny offline models (BERT, T5, ViT) for tests, demos and debugging.

Each builder creates a randomly initialised model from a small config and saves it with
`save_pretrained`, together with a tokenizer (text models) or an image processor (ViT), so the
folder loads by path exactly like a hub model: `MultiTaskModule(backbone=str(path))`. The
tokenizers are trained on the spot with the `tokenizers` library, so nothing is downloaded.
"""

from __future__ import annotations

import os
import string
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    BertConfig,
    BertModel,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
    ViTConfig,
    ViTImageProcessor,
    ViTModel,
)

# Enough English to give the tokenizers real word pieces; every printable ASCII character is added
# to the alphabet as well, so any text tokenizes without unknown tokens.
_BUILTIN_CORPUS = """
what is the name of the largest city in the world and how many people live there
who wrote the book about the war and when was it published
how far is it from the moon to the earth in miles
where is the capital of the country with the longest river
why do birds fly south for the winter months
this movie is a wonderful story with great actors and a moving ending
the film was boring , too long and the plot made no sense at all
a funny , warm and smart comedy that everyone should see
the worst script i have seen this year ; bad acting and weak jokes
the company reported strong earnings and the stock market rose today
the team won the game after a late goal in the second half
scientists found a new species of fish in the deep ocean
free entry to win a prize call now to claim your cash reward
are you coming home for dinner tonight or should i wait
negative positive description entity abbreviation human location number
sadness joy anger optimism spam ham business sports world science technology
acceptable unacceptable subjective objective yes no true false
""".split("\n")


def builtin_corpus() -> list[str]:
    """The built-in sentences the tiny tokenizers are trained on (when no texts are given)."""
    return [line.strip() for line in _BUILTIN_CORPUS if line.strip()]


def train_wordpiece_tokenizer(
    texts: Iterable[str] | None = None, vocab_size: int = 600
) -> PreTrainedTokenizerFast:
    """A lower-casing BERT-style WordPiece tokenizer ([CLS] text [SEP]) trained on `texts`.

    Args:
        texts: training sentences; the built-in corpus when None.
        vocab_size: upper bound on the vocabulary size (special tokens and the alphabet included).
    """
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=list(string.printable.strip().lower()),
    )
    tok.train_from_iterator(list(texts) if texts is not None else builtin_corpus(), trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def train_unigram_tokenizer(
    texts: Iterable[str] | None = None, vocab_size: int = 600
) -> PreTrainedTokenizerFast:
    """A T5-style Unigram tokenizer (`<pad>`=0, `</s>`=1, `<unk>`=2; appends `</s>`).

    Args:
        texts: training sentences; the built-in corpus when None.
        vocab_size: upper bound on the vocabulary size.
    """
    specials = ["<pad>", "</s>", "<unk>"]
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        unk_token="<unk>",
        initial_alphabet=list(string.printable.strip().lower()),
    )
    tok.train_from_iterator(list(texts) if texts is not None else builtin_corpus(), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    tok.decoder = decoders.Metaspace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


def _save(model: torch.nn.Module, extra: object, path: str | os.PathLike) -> Path:
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    extra.save_pretrained(out)
    return out


def build_tiny_bert(
    path: str | os.PathLike,
    texts: Iterable[str] | None = None,
    hidden_size: int = 32,
    num_layers: int = 2,
    seed: int = 0,
) -> Path:
    """Save a tiny BERT encoder (about 200 KB) with its WordPiece tokenizer to `path`.

    Args:
        path: output folder (created).
        texts: tokenizer training sentences; the built-in corpus when None.
        hidden_size: width of the encoder.
        num_layers: number of transformer layers.
        seed: seed of the random initialisation (same seed, same weights).
    """
    tokenizer = train_wordpiece_tokenizer(texts)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return _save(BertModel(config), tokenizer, path)


def build_tiny_t5(
    path: str | os.PathLike,
    texts: Iterable[str] | None = None,
    d_model: int = 32,
    num_layers: int = 2,
    seed: int = 0,
) -> Path:
    """Save a tiny T5 encoder-decoder (about 300 KB) with its Unigram tokenizer to `path`.

    Args:
        path: output folder (created).
        texts: tokenizer training sentences; the built-in corpus when None.
        d_model: width of the model.
        num_layers: number of encoder and of decoder layers.
        seed: seed of the random initialisation.
    """
    tokenizer = train_unigram_tokenizer(texts)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_ff=2 * d_model,
        d_kv=d_model // 2,
        num_layers=num_layers,
        num_decoder_layers=num_layers,
        num_heads=2,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return _save(T5ForConditionalGeneration(config), tokenizer, path)


def build_tiny_vit(
    path: str | os.PathLike,
    image_size: int = 32,
    patch_size: int = 8,
    num_channels: int = 1,
    hidden_size: int = 32,
    num_layers: int = 2,
    seed: int = 0,
) -> Path:
    """Save a tiny ViT (about 100 KB) with a matching image processor to `path`.

    The defaults match `MultiTaskDataModule`'s image defaults (32 x 32, one channel).

    Args:
        path: output folder (created).
        image_size: height and width of the input images.
        patch_size: side of the square patches.
        num_channels: image channels the patch embedding expects.
        hidden_size: width of the encoder.
        num_layers: number of transformer layers.
        seed: seed of the random initialisation.
    """
    config = ViTConfig(
        image_size=image_size,
        patch_size=patch_size,
        num_channels=num_channels,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden_size,
    )
    processor = ViTImageProcessor(
        size={"height": image_size, "width": image_size},
        image_mean=[0.5] * num_channels,
        image_std=[0.5] * num_channels,
    )
    torch.manual_seed(seed)
    return _save(ViTModel(config, add_pooling_layer=True), processor, path)


_BUILDERS = {"bert": build_tiny_bert, "t5": build_tiny_t5, "vit": build_tiny_vit}


def main(argv: list[str] | None = None) -> None:
    """`python -m neuroflow.testing {bert,t5,vit} PATH`: save a tiny model to PATH."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m neuroflow.testing", description=main.__doc__)
    parser.add_argument("kind", choices=sorted(_BUILDERS))
    parser.add_argument("path")
    args = parser.parse_args(argv)
    print(_BUILDERS[args.kind](args.path))


if __name__ == "__main__":
    main()
