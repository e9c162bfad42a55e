"""Canonical causal-LM rows: templates over columns, targets, choices, and missing columns caught
when the data is set up (before any training step), naming the task and the key."""

import json

import datasets
import pytest

from neuroflow.data import MultiTaskDataModule, TaskSpec, load_task
from neuroflow.data.prompts import canonicalize_llm

ROWS = {"question": ["2 + 3?", "7 - 1?"], "answer": [5, 6], "a": ["x", "y"], "b": ["u", "v"], "gold": [1, "b"]}


def spec(**kw) -> TaskSpec:
    base = {"name": "toy", "source": {"path": "json", "data_files": "toy.jsonl"}, "prompt_template": "Q: {question}\nA:"}
    return TaskSpec.from_dict({**base, **kw})


def test_prompts_targets_and_choices():
    gen = canonicalize_llm(spec(kind="generation", target_column="answer"), ROWS, "toy.jsonl")
    assert gen["prompt"] == ["Q: 2 + 3?\nA:", "Q: 7 - 1?\nA:"] and gen["target"] == ["5", "6"]
    assert list(gen["label"]) == [0, 0]
    mc = canonicalize_llm(spec(kind="multiple_choice", choices=["a", "b"], label_column="gold"), ROWS, "toy.jsonl")
    assert mc["choices"] == [["x", "u"], ["y", "v"]] and list(mc["label"]) == [1, 1]  # index, or the column name
    verbal = spec(kind="instruction", label_names=["neg", "pos"], verbalizer=["bad", "good"], label_column="gold",
                  prompt_template="{a}|{b}")
    rows = {**ROWS, "gold": [0, 1]}
    out = canonicalize_llm(verbal, rows, "toy.jsonl")
    assert out["prompt"] == ["x|u", "y|v"] and out["target"] == ["bad", "good"]


@pytest.mark.parametrize("change, key, missing", [
    ({"kind": "generation", "target_column": "answer", "prompt_template": "Q: {questoin}"}, "prompt_template", "questoin"),
    ({"kind": "generation", "target_column": "solution"}, "target_column", "solution"),
    ({"kind": "multiple_choice", "choices": ["a", "c"], "label_column": "gold"}, "choices", "c"),
    ({"kind": "multiple_choice", "label_names": ["x", "y"]}, "label_column", "label"),
])
def test_missing_columns_name_the_task_and_key(change, key, missing):
    with pytest.raises(ValueError, match=rf"task 'toy': `{key}` names column\(s\) \['{missing}'\] not found in "
                                         r"toy.jsonl; available columns"):
        canonicalize_llm(spec(**change), ROWS, "toy.jsonl")


def test_empty_values_are_refused():
    with pytest.raises(ValueError, match="column 'question' in toy.jsonl, row 1: empty value"):
        canonicalize_llm(spec(kind="generation", target_column="answer"), {**ROWS, "question": ["a", None]}, "toy.jsonl")


def test_a_missing_template_column_fails_in_setup_before_training(tmp_path, causal_paths):
    path = tmp_path / "toy.jsonl"
    path.write_text("\n".join(json.dumps({"question": f"q{i}", "answer": str(i)}) for i in range(20)) + "\n")
    task = {"name": "toy", "kind": "generation", "source": {"path": "json", "data_files": str(path)},
            "prompt_template": "Q: {qestion}", "target_column": "answer"}
    dm = MultiTaskDataModule([task], tokenizer=causal_paths["llama"], max_length=32, max_target_length=8,
                             cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match=r"task 'toy': `prompt_template` names column\(s\) \['qestion'\]"):
        dm.setup("fit")
    splits = load_task(TaskSpec.from_dict({**task, "prompt_template": "Q: {question}"}), tmp_path)
    assert isinstance(splits["train"], datasets.Dataset) and splits["train"].column_names == ["prompt", "target", "label"]
    assert sum(len(splits[s]) for s in ("train", "validation", "test")) == 20
