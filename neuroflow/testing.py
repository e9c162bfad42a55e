"""Tiny offline models (BERT, T5, ViT; LLaMA, Mistral, Qwen2, GPT-2) for tests, demos and debugging.

Each builder creates a randomly initialised model from a small config and saves it with
`save_pretrained`, together with a tokenizer (text models) or an image processor (ViT), so the
folder loads by path exactly like a hub model: `MultiTaskModule(backbone=str(path))`. The
tokenizers are trained on the spot with the `tokenizers` library, so nothing is downloaded. The
causal LMs live in `neuroflow.testing_causal` and are re-exported here.
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


# Causal LMs. Real data lines make the BPE merges look like the tasks' text; the built-in corpus
# and a line of digits and symbols keep any text encodable (byte-level BPE has no unknown token).
_DATA_FILES = (("sst2/stsa.binary.train", "space"), ("trec/TREC.train.all", "space"), ("agnews/test.csv", "csv"))
_EXTRA_LINES = ["0 1 2 3 4 5 6 7 8 9 10 12 24 36 48 72 100 1,000 3.5 -4 $5 #### = + - * / ( ) ? ! . , : ;",
                "review : sentiment : question : answer : topic : choose : positive negative"]


def data_corpus(data_dir: str | os.PathLike | None = None, lines_per_file: int = 200) -> list[str]:
    """Training lines for the causal tokenizers: the built-in corpus plus the first lines of a few
    shared text datasets (read in place; nothing is copied) when `data_dir` has them.

    Args:
        data_dir: the shared data folder; None = `neuroflow.hub.default_data_dir()`.
        lines_per_file: lines taken from each dataset file.
    """
    from neuroflow.hub import default_data_dir

    root = Path(data_dir if data_dir is not None else default_data_dir())
    lines = builtin_corpus() + list(_EXTRA_LINES)
    for rel, fmt in _DATA_FILES:
        path = root / rel
        if not path.is_file():
            continue
        with open(path, encoding="latin-1") as handle:
            for _, line in zip(range(lines_per_file), handle):
                lines.append(line.split(" ", 1)[-1].strip() if fmt == "space" else line.strip().replace('","', " "))
    return lines


def train_bpe_tokenizer(
    texts: Iterable[str] | None = None, vocab_size: int = 1000, style: str = "llama"
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer without a pad token, as causal LMs ship them.

    Args:
        texts: training sentences; the built-in corpus when None.
        vocab_size: upper bound on the vocabulary size (the 256 byte symbols included).
        style: `llama` (`<unk>`, `<s>` prepended as BOS, `</s>` as EOS) or `gpt2` (one
            `<|endoftext|>` token as BOS/EOS/UNK, nothing added to the text).
    """
    specials = ["<unk>", "<s>", "</s>"] if style == "llama" else ["<|endoftext|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(texts) if texts is not None else builtin_corpus(), trainer=trainer)
    if style == "llama":
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", tok.token_to_id("<s>"))])
        return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    eot = "<|endoftext|>"
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=eot, eos_token=eot, unk_token=eot)


def _causal_config(arch: str, vocab: int, hidden: int, layers: int, bos: int, eos: int) -> object:
    from transformers import GPT2Config, LlamaConfig, MistralConfig, Qwen2Config

    if arch == "gpt2":
        return GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=2, n_positions=256,
                          bos_token_id=bos, eos_token_id=eos)
    common = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  bos_token_id=bos, eos_token_id=eos)
    if arch == "llama":
        return LlamaConfig(**common)
    if arch == "mistral":
        return MistralConfig(**common, sliding_window=None)
    if arch == "qwen2":  # small Qwen2 checkpoints tie the LM head to the embeddings
        return Qwen2Config(**common, tie_word_embeddings=True)
    raise ValueError(f"unknown tiny causal architecture {arch!r}; choose one of {sorted(CAUSAL_BUILDERS)}")


def build_tiny_causal_lm(
    path: str | os.PathLike,
    arch: str = "llama",
    texts: Iterable[str] | None = None,
    hidden_size: int = 32,
    num_layers: int = 2,
    vocab_size: int = 1000,
    seed: int = 0,
) -> Path:
    """Save a tiny decoder-only LM (a few hundred KB) with its BPE tokenizer to `path`.

    Args:
        path: output folder (created).
        arch: `llama`, `mistral`, `qwen2` (4 query / 2 key-value heads; Qwen2 with a tied LM
            head and a pad token) or `gpt2` (`Conv1D` layers, tied LM head).
        texts: tokenizer training sentences (e.g. `data_corpus()`); the built-in corpus when None.
        hidden_size: width of the model.
        num_layers: number of decoder layers.
        vocab_size: upper bound on the tokenizer's vocabulary.
        seed: seed of the random initialisation (same seed, same weights).
    """
    from transformers import AutoModelForCausalLM

    # Qwen2 and GPT-2 tokenizers use one `<|endoftext|>` token and add no BOS (Qwen2's tokenizer
    # class also pads with it); LLaMA and Mistral prepend `<s>` and have no pad token.
    tokenizer = train_bpe_tokenizer(texts, vocab_size, "gpt2" if arch in ("gpt2", "qwen2") else "llama")
    config = _causal_config(arch, len(tokenizer), hidden_size, num_layers, tokenizer.bos_token_id,
                            tokenizer.eos_token_id)
    torch.manual_seed(seed)
    return _save(AutoModelForCausalLM.from_config(config), tokenizer, path)


def build_tiny_llama(path: str | os.PathLike, texts: Iterable[str] | None = None, seed: int = 0) -> Path:
    """A tiny LLaMA (see `build_tiny_causal_lm`). Args: path: output folder; texts: tokenizer
    corpus; seed: initialisation seed."""
    return build_tiny_causal_lm(path, "llama", texts, seed=seed)


def build_tiny_mistral(path: str | os.PathLike, texts: Iterable[str] | None = None, seed: int = 0) -> Path:
    """A tiny Mistral (see `build_tiny_causal_lm`). Args: path: output folder; texts: tokenizer
    corpus; seed: initialisation seed."""
    return build_tiny_causal_lm(path, "mistral", texts, seed=seed)


def build_tiny_qwen2(path: str | os.PathLike, texts: Iterable[str] | None = None, seed: int = 0) -> Path:
    """A tiny Qwen2 with a tied LM head (see `build_tiny_causal_lm`). Args: path: output folder;
    texts: tokenizer corpus; seed: initialisation seed."""
    return build_tiny_causal_lm(path, "qwen2", texts, seed=seed)


def build_tiny_gpt2(path: str | os.PathLike, texts: Iterable[str] | None = None, seed: int = 0) -> Path:
    """A tiny GPT-2 (`Conv1D`, tied LM head; see `build_tiny_causal_lm`). Args: path: output
    folder; texts: tokenizer corpus; seed: initialisation seed."""
    return build_tiny_causal_lm(path, "gpt2", texts, seed=seed)


CAUSAL_BUILDERS = {"llama": build_tiny_llama, "mistral": build_tiny_mistral, "qwen2": build_tiny_qwen2,
                   "gpt2": build_tiny_gpt2}
_BUILDERS = {"bert": build_tiny_bert, "t5": build_tiny_t5, "vit": build_tiny_vit, **CAUSAL_BUILDERS}


BUILDER_NAMES = tuple(_BUILDERS)


def build(kind: str, path: str | os.PathLike) -> Path:
    """Save the tiny `kind` model (one of `BUILDER_NAMES`) to folder `path`; causal LMs get a
    tokenizer trained on the shared data (the same for every call)."""
    return CAUSAL_BUILDERS[kind](path, texts=data_corpus(None)) if kind in CAUSAL_BUILDERS else _BUILDERS[kind](path)


def main(argv: list[str] | None = None) -> None:
    """`python -m neuroflow.testing {bert,t5,vit,llama,mistral,qwen2,gpt2} PATH`: save a tiny model to PATH
    (causal LMs get a tokenizer trained on lines of the shared data when `--data_dir` has them)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m neuroflow.testing", description=main.__doc__)
    parser.add_argument("kind", choices=sorted(_BUILDERS))
    parser.add_argument("path")
    parser.add_argument("--data_dir", default=None, help="shared data for the causal tokenizers' corpus")
    args = parser.parse_args(argv)
    if args.kind in CAUSAL_BUILDERS:
        print(CAUSAL_BUILDERS[args.kind](args.path, texts=data_corpus(args.data_dir)))
    else:
        print(_BUILDERS[args.kind](args.path))


if __name__ == "__main__":
    main()
