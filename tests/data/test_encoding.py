"""Tokenization (cached on disk), dynamic padding, text2text targets, image batches."""

import datasets
import numpy as np
import pytest
import torch

import neuroflow.data.encoding as encoding
from neuroflow.data import TaskSpec
from neuroflow.data.collate import TaskCollator, pad_sequences
from neuroflow.data.encoding import encode_split, tokenizer_fingerprint
from neuroflow.data.image_transform import ImageTransform

TEXTS = ["a short one", "this sentence is quite a bit longer than the first one", "mid length text"]


def canonical(texts=TEXTS, labels=(0, 1, 0), pairs=None):
    data = {"text": list(texts), "label": list(labels)}
    if pairs:
        data["text_pair"] = list(pairs)
    return datasets.Dataset.from_dict(data)


def make_spec(**kw):
    base = {"name": "toy", "source": {"path": "csv", "data_files": "t.csv"}, "label_names": ["neg", "pos"],
            "text_column": "text"}
    return TaskSpec.from_dict({**base, **kw})


def test_encode_matches_tokenizer_and_collation_pads_to_the_longest(minilm_tokenizer, tmp_path):
    spec = make_spec()
    enc = encode_split(canonical(), spec, "train", minilm_tokenizer, 128, 8, str(tmp_path))
    assert enc.column_names == ["input_ids", "token_type_ids", "attention_mask", "labels"] or \
        set(enc.column_names) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    assert enc[1]["input_ids"] == minilm_tokenizer(TEXTS[1])["input_ids"]
    batch = TaskCollator("toy", spec.kind, minilm_tokenizer.pad_token_id)(enc[[0, 1, 2]])
    lengths = [len(minilm_tokenizer(t)["input_ids"]) for t in TEXTS]
    assert batch["input_ids"].shape == (3, max(lengths)) and max(lengths) < 128
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert batch["input_ids"][0, lengths[0]:].eq(minilm_tokenizer.pad_token_id).all()
    assert batch["labels"].tolist() == [0, 1, 0] and batch["task"] == "toy"
    # Truncation at max_length.
    short = encode_split(canonical(), spec, "train", minilm_tokenizer, 5, 8, str(tmp_path))
    assert max(len(x) for x in short["input_ids"]) == 5


def test_second_run_is_a_cache_hit_and_settings_do_not_collide(minilm_tokenizer, tmp_path, monkeypatch):
    spec = make_spec()
    first = encode_split(canonical(), spec, "train", minilm_tokenizer, 64, 8, str(tmp_path))
    files = sorted(p.name for p in (tmp_path / "tokenized" / "toy").iterdir())
    assert len(files) == 1 and files[0].startswith("train-")

    def must_not_run(*args, **kwargs):
        raise AssertionError("tokenized again instead of reading the cache")

    monkeypatch.setattr(encoding, "encode_batch", must_not_run)
    again = encode_split(canonical(), spec, "train", minilm_tokenizer, 64, 8, str(tmp_path))
    assert again["input_ids"][:] == first["input_ids"][:]
    assert again.cache_files[0]["filename"].endswith(files[0])
    # Another max_length, other content or another template is another cache entry.
    for ds, sp, length in [(canonical(), spec, 32), (canonical(labels=(1, 1, 0)), spec, 64),
                           (canonical(), make_spec(input_template="review: {text}"), 64)]:
        with pytest.raises(AssertionError, match="tokenized again"):
            encode_split(ds, sp, "train", minilm_tokenizer, length, 8, str(tmp_path))


def test_tokenizer_fingerprint_depends_on_the_vocabulary(minilm_tokenizer, tmp_path):
    from transformers import AutoTokenizer

    before = tokenizer_fingerprint(minilm_tokenizer)
    minilm_tokenizer(["some text"], truncation=True, max_length=3)  # leaves state in the backend
    assert tokenizer_fingerprint(minilm_tokenizer) == before
    minilm_tokenizer.save_pretrained(tmp_path / "tok")
    same = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert tokenizer_fingerprint(same) == tokenizer_fingerprint(minilm_tokenizer)
    same.add_tokens(["neuroflowtoken"])
    assert tokenizer_fingerprint(same) != tokenizer_fingerprint(minilm_tokenizer)


def test_text2text_targets_are_verbalized_and_padded_with_minus_100(minilm_tokenizer, tmp_path):
    spec = make_spec(kind="text2text", verbalizer=["terrible", "great movie"], input_template="sst2 sentence: {text}")
    enc = encode_split(canonical(), spec, "train", minilm_tokenizer, 64, 8, str(tmp_path))
    assert enc[0]["input_ids"] == minilm_tokenizer("sst2 sentence: " + TEXTS[0])["input_ids"]
    batch = TaskCollator("toy", spec.kind, minilm_tokenizer.pad_token_id)(enc[[0, 1]])
    short = minilm_tokenizer(text_target="terrible")["input_ids"]
    long = minilm_tokenizer(text_target="great movie")["input_ids"]
    assert len(long) > len(short)
    assert batch["labels"].shape == (2, len(long))
    assert batch["labels"][0].tolist() == short + [-100] * (len(long) - len(short))
    assert batch["labels"][1].tolist() == long
    assert batch["label_index"].tolist() == [0, 1]
    assert "token_type_ids" not in batch or batch["token_type_ids"].shape == batch["input_ids"].shape


def test_sentence_pairs_encode_as_two_segments(minilm_tokenizer, tmp_path):
    spec = make_spec(text_pair_column="hyp")
    enc = encode_split(canonical(pairs=["x", "y", "z"]), spec, "train", minilm_tokenizer, 64, 8, str(tmp_path))
    assert enc[0]["input_ids"] == minilm_tokenizer(TEXTS[0], "x")["input_ids"]
    assert 1 in enc[0]["token_type_ids"]


def test_pad_sequences_sides_and_multiple():
    out = pad_sequences([[1, 2, 3], [4]], 0, "right", multiple_of=4)
    assert out.tolist() == [[1, 2, 3, 0], [4, 0, 0, 0]]
    assert pad_sequences([[1, 2], [3]], 9, "left").tolist() == [[1, 2], [9, 3]]


def test_image_transform_resizes_matches_channels_and_normalizes():
    images = np.zeros((2, 8, 8), dtype=np.float32)
    images[1] = 1.0
    x = ImageTransform(image_size=16, num_channels=1)(images)
    assert x.shape == (2, 1, 16, 16) and x.dtype == torch.float32
    assert torch.allclose(x[0], torch.full_like(x[0], -1.0)) and torch.allclose(x[1], torch.ones_like(x[1]))
    rgb = ImageTransform(image_size=None, num_channels=3, mean=[0.0, 0.5, 1.0], std=[1.0, 1.0, 1.0])(images)
    assert rgb.shape == (2, 3, 8, 8)
    assert rgb[1, :, 0, 0].tolist() == [1.0, 0.5, 0.0]
    # uint8 and PIL inputs are scaled by 255; RGB goes to luminance for 1 channel.
    from PIL import Image

    pil = Image.fromarray(np.full((4, 4, 3), 255, dtype=np.uint8))
    y = ImageTransform(image_size=4, num_channels=1, mean=[0.0], std=[1.0])([pil, np.zeros((4, 4), np.uint8)])
    assert torch.allclose(y[0], torch.ones(1, 4, 4), atol=1e-5) and y[1].abs().max() == 0
    with pytest.raises(ValueError, match="image_mean needs 1 or 3 values"):
        ImageTransform(num_channels=3, mean=[0.1, 0.2])


def test_image_collation():
    rows = {"image": np.random.default_rng(0).random((5, 8, 8), dtype=np.float32), "label": np.arange(5)}
    batch = TaskCollator("digits", "image_classification", image_transform=ImageTransform(32, 1))(rows)
    assert batch["pixel_values"].shape == (5, 1, 32, 32)
    assert batch["pixel_values"].min() >= -1 and batch["pixel_values"].max() <= 1
    assert batch["labels"].tolist() == [0, 1, 2, 3, 4] and batch["task"] == "digits"


def test_format_inputs_templates_and_pairs():
    from neuroflow.data.encoding import format_inputs

    cls = make_spec(text_pair_column="h", input_template="premise: {text}")
    assert format_inputs(cls, ["a"], ["b"]) == (["premise: a"], ["b"])
    both = make_spec(text_pair_column="h", input_template="{text} ? {text_pair}")
    assert format_inputs(both, ["a"], ["b"]) == (["a ? b"], None)
    t2t = make_spec(kind="text2text", text_pair_column="h", input_template="nli: {text}")
    assert format_inputs(t2t, ["a"], ["b"]) == (["nli: a b"], None)
    assert format_inputs(make_spec(), ["a"], None) == (["a"], None)


def test_images_of_different_sizes_are_resized_one_by_one():
    from PIL import Image

    small = Image.fromarray(np.full((6, 4), 255, dtype=np.uint8))
    large = Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8))
    x = ImageTransform(image_size=8, num_channels=3, mean=[0.0], std=[1.0])([small, large])
    assert x.shape == (2, 3, 8, 8)
    assert torch.allclose(x[0], torch.ones(3, 8, 8), atol=1e-5) and x[1].abs().max() == 0
    with pytest.raises(ValueError, match="images of different sizes .* set image_size"):
        ImageTransform(image_size=None)([small, large])
