"""TaskSpec fields of the causal-LM kinds and safe task names: every mistake fails when the spec is
built, naming the task, the key and (through the registry) the file."""

import pytest

from neuroflow.data import TaskSpec, resolve_task
from neuroflow.data.llm_spec import template_fields

BASE = {"name": "t", "source": {"path": "json", "data_files": "x.jsonl"}, "prompt_template": "Q: {question}\nA:"}


def spec(**kw) -> TaskSpec:
    return TaskSpec.from_dict({**BASE, **kw}, origin="test.yaml")


def test_defaults_per_kind_and_round_trip():
    mc = spec(kind="multiple_choice", label_names=["no", "yes"])
    assert mc.metrics == ["acc", "acc_norm"] and mc.primary_metric == "acc" and mc.choice_texts == ["no", "yes"]
    columns = spec(kind="multiple_choice", choices=["a", "b", "c"])
    assert columns.label_names == ["a", "b", "c"] and columns.choice_texts is None and columns.uses_label
    gen = spec(kind="generation", target_column="answer", metrics=["numeric_match", "my_pkg.scorers.Fuzzy"])
    assert gen.metric_keys == ["numeric_match", "Fuzzy"] and not gen.uses_label and gen.label_names == []
    ins = spec(kind="instruction", label_names=["neg", "pos"], verbalizer=["bad", "good"])
    assert ins.metrics == ["exact_match"] and ins.uses_label and ins.targets == ["bad", "good"]
    for s in (mc, columns, gen, ins):
        assert TaskSpec.from_dict(s.to_dict()) == s
    assert spec(kind="generation", target_column="a").is_llm and not TaskSpec(
        name="c", source={"path": "csv"}, label_names=["a", "b"], text_column="t").is_llm
    assert template_fields("{a} and {b} then {a}", "w") == ["a", "b"]


@pytest.mark.parametrize("change, message", [
    ({"kind": "generation", "prompt_template": None, "target_column": "a"}, "needs `prompt_template`"),
    ({"kind": "generation", "prompt_template": "Q: {}", "target_column": "a"}, "`prompt_template` .* positional"),
    ({"kind": "generation", "prompt_template": "Q: {q", "target_column": "a"}, "`prompt_template` .* not a valid"),
    ({"kind": "multiple_choice", "choices": ["only"]}, r"`choices` needs at least 2 entries, got \['only'\]"),
    ({"kind": "multiple_choice", "label_names": ["only"]}, "`choices` \\(here the verbalizer / label_names\\) needs at least 2"),
    ({"kind": "multiple_choice", "choices": ["a", "b"], "label_names": ["x", "y", "z"]}, "3 entries for 2 `choices`"),
    ({"kind": "multiple_choice", "label_names": ["a", "b"], "verbalizer": ["same", "same"]}, "not distinct"),
    ({"kind": "multiple_choice", "label_names": ["a", "b"], "target_column": "x"}, "`target_column` does not apply"),
    ({"kind": "multiple_choice", "label_names": ["a", "b"], "metrics": ["accuracy"]}, r"unknown metrics \['accuracy'\]"),
    ({"kind": "generation", "target_column": "a", "choices": ["x", "y"]}, "`choices` only applies to multiple_choice"),
    ({"kind": "generation"}, "needs `target_column`, or `label_names`"),
    ({"kind": "generation", "target_column": "a", "metrics": ["bleu"]}, r"unknown metrics \['bleu'\]"),
    ({"kind": "generation", "target_column": "a", "max_new_tokens": 0}, "`max_new_tokens` must be >= 1"),
    ({"kind": "generation", "target_column": "a", "stop": "\n"}, "`stop` must be a list"),
    ({"kind": "generation", "target_column": "a", "input_template": "{text}"}, "use `prompt_template`"),
    ({"kind": "text_classification", "text_column": "q", "label_names": ["a", "b"]}, "belong to the causal-LM kinds"),
    ({"kind": "text_classification", "text_column": "q", "label_names": ["a", "b"], "prompt_template": None,
      "packing": True}, "`packing` only applies"),
])
def test_bad_llm_fields_name_the_task_and_key(change, message):
    with pytest.raises(ValueError, match=f"test.yaml: task 't': .*{message}"):
        spec(**change)


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", "-dash", "+plus", "a..b", "with space", "tab\t", "é"])
def test_unsafe_task_names_are_refused(name, tmp_path):
    with pytest.raises(ValueError, match=r"test.yaml: task .*`name` must be a safe identifier"):
        spec(name=name, kind="generation", target_column="a")
    (tmp_path / "bad.yaml").write_text(f"name: {name!r}\nkind: generation\nsource: {{path: json}}\n"
                                       "prompt_template: '{{q}}'\ntarget_column: a\n")
    with pytest.raises(ValueError, match=r"task file '.*bad.yaml': task .*safe identifier"):
        resolve_task(str(tmp_path / "bad.yaml"))


@pytest.mark.parametrize("name", ["sst2", "a+b", "x.y-z", "7b_llama", "_private", "GSM8K"])
def test_safe_task_names_are_accepted(name):
    assert spec(name=name, kind="generation", target_column="a").name == name
