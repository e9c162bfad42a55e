"""Causal-LM tokenization: prompt masking, lm-eval-style continuations, left truncation (counted),
choices, packing, the pad token, and the DataModule's checks and counts."""

import datasets
import pytest

from neuroflow.data import MultiTaskDataModule, TaskSpec
from neuroflow.data.encoding import encode_split
from neuroflow.data.llm_encoding import encode_llm_batch, pack_rows, special_token_layout, split_prompt
from neuroflow.data.pad_token import ensure_pad_token

LONG = "Review: " + " ".join(["this film is long and slow"] * 20) + " the end\nSentiment:"


def spec(kind: str = "instruction", **kw) -> TaskSpec:
    base = {"name": "toy", "kind": kind, "source": {"path": "json"}, "prompt_template": "{q}"}
    if kind != "multiple_choice":
        base["target_column"] = "a"
    else:
        base["label_names"] = ["negative", "positive"]
    return TaskSpec.from_dict({**base, **kw})


def test_prompt_tokens_are_masked_and_the_target_ends_with_eos(llama_tokenizer):
    tok = llama_tokenizer
    out = encode_llm_batch({"prompt": ["Question: 2 + 3?\nAnswer:"], "target": ["5"], "label": [0]}, spec(), tok, 64, 8,
                           training=True)
    ids, labels = out["input_ids"][0], out["labels"][0]
    prompt = tok("Question: 2 + 3?\nAnswer:")["input_ids"]
    whole = tok("Question: 2 + 3?\nAnswer: 5")["input_ids"]
    assert ids == whole + [tok.eos_token_id]  # the continuation as the whole string tokenizes it
    assert labels == [-100] * len(prompt) + whole[len(prompt):] + [tok.eos_token_id]
    assert out["prompt_truncated"] == [0] and "prompt_ids" not in out
    evaluation = encode_llm_batch({"prompt": ["Question: 2 + 3?\nAnswer:"], "target": ["5"], "label": [0]}, spec(), tok,
                                  64, 8, training=False)
    assert evaluation["prompt_ids"] == [prompt] and evaluation["target"] == ["5"] and evaluation["input_ids"] == [ids]


def test_trailing_prompt_whitespace_moves_to_the_continuation():
    assert split_prompt("Answer: ", " 5") == ("Answer:", "  5")
    assert split_prompt("Answer:\n", "5") == ("Answer:", "\n5")


def test_long_prompts_are_truncated_from_the_left_keeping_bos(llama_tokenizer):
    tok = llama_tokenizer
    assert special_token_layout(tok) == (1, 0)
    out = encode_llm_batch({"prompt": [LONG, "short"], "target": ["positive", "x"], "label": [0, 0]}, spec(), tok, 40, 8,
                           training=False)
    assert out["prompt_truncated"] == [1, 0]
    ids = out["input_ids"][0]
    assert len(ids) == 40 and ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    full_prompt = tok(LONG)["input_ids"]
    kept = out["prompt_ids"][0]
    assert kept[1:] == full_prompt[-(len(kept) - 1):]  # the end of the prompt (next to the answer) survives
    assert tok.decode(kept, skip_special_tokens=True).endswith("the end\nSentiment:")


def test_targets_longer_than_max_target_length_are_cut_and_counted(llama_tokenizer):
    out = encode_llm_batch({"prompt": ["Q:"], "target": [" ".join(["word"] * 30)], "label": [0]}, spec(),
                           llama_tokenizer, 64, 6, training=True)
    assert out["target_truncated"] == [1] and sum(label != -100 for label in out["labels"][0]) == 6 + 1  # + EOS


def test_multiple_choice_rows(llama_tokenizer):
    tok = llama_tokenizer
    batch = {"prompt": ["Review: great\nSentiment:"], "choices": [["negative", "positive"]], "label": [1]}
    train = encode_llm_batch(batch, spec("multiple_choice"), tok, 64, 8, training=True)
    prompt = tok("Review: great\nSentiment:")["input_ids"]
    gold = tok("Review: great\nSentiment: positive")["input_ids"]
    assert train["input_ids"] == [gold]  # the gold choice, no EOS: scored the same way
    assert train["labels"] == [[-100] * len(prompt) + gold[len(prompt):]]
    ev = encode_llm_batch(batch, spec("multiple_choice"), tok, 64, 8, training=False)
    neg = tok("Review: great\nSentiment: negative")["input_ids"]
    assert ev["prompt_ids"] == [prompt] and ev["choice_ids"] == [[neg[len(prompt):], gold[len(prompt):]]]
    assert ev["choice_chars"] == [[8, 8]] and ev["label"] == [1] and "input_ids" not in ev


def test_packing_concatenates_whole_examples():
    batch = {"input_ids": [[1, 2, 3], [4, 5], [6, 7, 8, 9], [10]], "labels": [[-100, 2, 3], [-100, 5], [-100, -100, 8, 9], [10]],
             "prompt_truncated": [0, 1, 0, 1], "target_truncated": [0, 0, 0, 0]}
    out = pack_rows(batch, max_length=5)
    assert out["input_ids"] == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]
    assert out["labels"] == [[-100, 2, 3, -100, 5], [-100, -100, 8, 9, 10]]
    assert out["prompt_truncated"] == [1, 1]


def test_pad_token_is_eos_with_one_warning(llama_tokenizer, causal_paths, monkeypatch):
    monkeypatch.setattr("neuroflow.data.pad_token._REPORTED", set())
    assert llama_tokenizer.pad_token is None
    with pytest.warns(UserWarning, match=r"has no pad token; padding the batches of tasks \['toy'\] with its EOS"):
        ensure_pad_token(llama_tokenizer, ["toy"])
    assert llama_tokenizer.pad_token_id == llama_tokenizer.eos_token_id
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(causal_paths["llama"])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same tokenizer is not reported twice
        ensure_pad_token(again, ["toy"])
    again.eos_token = None
    again.pad_token = None
    with pytest.raises(ValueError, match="no pad token and no EOS token, which tasks \\['toy'\\] need"):
        ensure_pad_token(again, ["toy"])


def test_encode_split_caches_train_and_eval_separately(llama_tokenizer, tmp_path):
    ensure_pad_token(llama_tokenizer, ["toy"])
    ds = datasets.Dataset.from_dict({"prompt": ["a b", "c d e"], "target": ["x", "y"], "label": [0, 0]})
    train = encode_split(ds, spec(), "train", llama_tokenizer, 32, 8, str(tmp_path))
    val = encode_split(ds, spec(), "validation", llama_tokenizer, 32, 8, str(tmp_path))
    assert "prompt_ids" not in train.column_names and "prompt_ids" in val.column_names
    again = encode_split(ds, spec(), "train", llama_tokenizer, 32, 8, str(tmp_path))
    assert again.cache_files[0]["filename"] == train.cache_files[0]["filename"]
    packed = encode_split(ds, spec(packing=True), "train", llama_tokenizer, 32, 8, str(tmp_path))
    assert len(packed) == 1 and packed["input_ids"][0] == train["input_ids"][0] + train["input_ids"][1]


def test_datamodule_counts_truncation_and_checks_lengths(real_data_dir, causal_paths, tmp_path):
    task = {"name": "sst2_choice", "kind": "multiple_choice", "label_names": ["negative", "positive"],
            "label_format": "index", "prompt_template": "Review: {text}\nSentiment:",
            "source": {"path": "label_text_lines", "pattern": r"^(?P<label>[01]) (?P<text>.*)$",
                       "data_files": {"train": "sst2/stsa.binary.train", "test": "sst2/stsa.binary.test"}},
            "splits": {"train": "train", "test": "test"}, "split_fractions": {"validation": 0.1}}
    with pytest.raises(ValueError, match=r"data.max_target_length \(32\) must be below data.max_length \(32\).*sst2_choice"):
        MultiTaskDataModule([task], data_dir=real_data_dir, tokenizer=causal_paths["llama"], max_length=32)
    dm = MultiTaskDataModule([task], data_dir=real_data_dir, tokenizer=causal_paths["llama"], max_length=24,
                             max_target_length=4, max_train_examples=40, max_eval_examples=30, cache_dir=str(tmp_path))
    with pytest.warns(UserWarning, match=r"task 'sst2_choice': \d+ of 30 validation prompts do not fit into "
                                         r"data.max_length \(24\)"):
        dm.setup("validate")
    counts = dm.truncation_counts["sst2_choice"]["validation"]
    assert 0 < counts["prompt_truncated"] <= 30 and counts["target_truncated"] == 0
    batch = next(iter(dm.val_dataloader()[0]))
    assert int(batch["prompt_truncated"].sum()) <= counts["prompt_truncated"]
    assert dm.tokenizer.pad_token_id == dm.tokenizer.eos_token_id  # set (with a warning) for padding
