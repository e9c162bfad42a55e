"""Every shared dataset loads through its built-in YAML alone, with the documented sizes."""

import numpy as np
import pytest

from neuroflow.data import TaskSpec, known_tasks, load_task, resolve_task

# task -> (train, validation, test) after the built-in splits, number of classes.
# Source sizes (README): sst2 6920/872/1821; trec 5452/500 (validation = 10% of train);
# subj 10000, agnews 7600, sms 5574, mnist 10000, semeion 1593, digits 1797, binalpha 1404
# (80/10/10); tweet_emotion 3257/374/1421; banking77 10003/3080; cola 8551/527; usps 7291/2007.
EXPECTED = {
    "sst2": ((6920, 872, 1821), 2),
    "trec": ((5452 - 545, 545, 500), 6),
    "subj": ((8000, 1000, 1000), 2),
    "agnews": ((6080, 760, 760), 4),
    "sms_spam": ((5574 - 2 * 557, 557, 557), 2),
    "tweet_emotion": ((3257, 374, 1421), 4),
    "banking77": ((10003 - 1000, 1000, 3080), 77),
    "cola": ((8551 - 855, 855, 527), 2),
    "mnist_test": ((8000, 1000, 1000), 10),
    "usps": ((7291 - 729, 729, 2007), 10),
    "semeion": ((1593 - 2 * 159, 159, 159), 10),
    "sklearn_digits": ((1797 - 2 * 180, 180, 180), 10),
    "binalpha": ((1404 - 2 * 140, 140, 140), 36),
}
IMAGE_SHAPES = {"mnist_test": (28, 28), "usps": (16, 16), "semeion": (16, 16), "sklearn_digits": (8, 8),
                "binalpha": (20, 16)}


def test_all_thirteen_builtins_are_registered():
    assert set(EXPECTED) <= set(known_tasks())


@pytest.fixture(scope="module")
def loaded(real_data_dir):
    return {name: load_task(resolve_task(name), real_data_dir) for name in EXPECTED}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_builtin_sizes_classes_and_labels(loaded, name):
    sizes, num_classes = EXPECTED[name]
    spec = resolve_task(name)
    dd = loaded[name]
    assert spec.num_labels == num_classes
    assert (len(dd["train"]), len(dd["validation"]), len(dd["test"])) == sizes
    for split in ("train", "validation", "test"):
        labels = np.asarray(dd[split]["label"])
        assert labels.min() >= 0 and labels.max() < num_classes
    # The large splits contain every class.
    assert len(np.unique(dd["train"]["label"])) == num_classes
    if spec.kind == "image_classification":
        images = dd["test"].with_format("numpy")[:]["image"]
        assert images.shape[1:] == IMAGE_SHAPES[name]
        assert images.dtype == np.float32 and images.min() >= 0.0 and images.max() <= 1.0
        assert images.max() > 0.5  # really scaled from the source range, not squashed to ~0
    else:
        texts = dd["train"]["text"]
        assert all(isinstance(t, str) for t in texts)
        assert sum(len(t) > 0 for t in texts) > 0.99 * len(texts)


def test_spot_checked_contents(loaded):
    # First line of stsa.binary.dev: "0 one long string of cliches ."
    assert loaded["sst2"]["validation"][0]["label"] == 0
    assert loaded["sst2"]["validation"][0]["text"].startswith("one long string of cliches")
    # agnews joins title and description; label 3 in the file is Business (offset 1).
    agnews = resolve_task("agnews")
    assert agnews.label_names[3 - 1] == "Business"
    # sms: 747 spam of 5574 in the whole file, stratified -> each split ~13.4% spam.
    spam = sum(int(np.sum(loaded["sms_spam"][s]["label"])) for s in ("train", "validation", "test"))
    assert spam == 747
    assert abs(np.mean(loaded["sms_spam"]["test"]["label"]) - 747 / 5574) < 0.01
    # binalpha: 39 images per class.
    counts = np.bincount(np.concatenate([loaded["binalpha"][s]["label"] for s in ("train", "validation", "test")]))
    assert counts.tolist() == [39] * 36
    # usps pixels come from [-1, 1]; the background (-1) maps to exactly 0.
    assert float(loaded["usps"]["train"].with_format("numpy")[:]["image"].min()) == 0.0
    # semeion: one-hot labels decode to a balanced ~159 per class.
    total = np.bincount(np.concatenate([loaded["semeion"][s]["label"] for s in ("train", "validation", "test")]))
    assert total.sum() == 1593 and total.min() >= 155


def test_tweet_emotion_items_are_split_on_newline_only(real_data_dir, loaded):
    raw = open(f"{real_data_dir}/tweet_emotion/val_text.txt", encoding="utf-8").read()
    items = raw.split("\n")[:-1]
    assert [r["text"] for r in loaded["tweet_emotion"]["validation"]] == items


def test_made_splits_are_deterministic_and_stratified(real_data_dir, loaded):
    again = load_task(resolve_task("subj"), real_data_dir)
    assert list(again["test"]["text"]) == list(loaded["subj"]["test"]["text"])
    assert np.bincount(loaded["subj"]["test"]["label"]).tolist() == [500, 500]
    trec = loaded["trec"]
    train_share = np.bincount(trec["train"]["label"], minlength=6) / len(trec["train"])
    val_share = np.bincount(trec["validation"]["label"], minlength=6) / len(trec["validation"])
    assert np.abs(train_share - val_share).max() < 0.01
    # Another seed gives another split.
    other = TaskSpec.from_dict({**resolve_task("subj").to_dict(), "split_seed": 7})
    assert list(load_task(other, real_data_dir)["test"]["text"]) != list(loaded["subj"]["test"]["text"])


def test_made_splits_partition_the_source(loaded):
    trec = loaded["trec"]
    all_text = list(trec["train"]["text"]) + list(trec["validation"]["text"])
    assert len(all_text) == 5452 and len(set(all_text)) > 5300


def test_caps_are_stratified_and_respected(real_data_dir, loaded):
    spec = resolve_task("sms_spam")
    capped = load_task(spec, real_data_dir, max_examples={"train": 200, "validation": 50, "test": 100})
    assert (len(capped["train"]), len(capped["validation"]), len(capped["test"])) == (200, 50, 100)
    spam_share = np.mean(capped["train"]["label"])
    assert abs(spam_share - 747 / 5574) < 0.01
    # The capped test set is a subset of the uncapped one (caps never change the split itself).
    assert set(capped["test"]["text"]) <= set(loaded["sms_spam"]["test"]["text"])
    # A spec's own caps apply too, and the loader's override them.
    own = TaskSpec.from_dict({**spec.to_dict(), "max_examples": {"test": 30}})
    assert len(load_task(own, real_data_dir)["test"]) == 30
    assert len(load_task(own, real_data_dir, max_examples={"test": 40})["test"]) == 40
