"""TaskSpec validation, label mapping, the registry and config parsing."""

import numpy as np
import pytest

from neuroflow.data import TaskSpec, known_tasks, resolve_task
from neuroflow.data.labels import map_labels

BASE = {"name": "t", "source": {"path": "csv", "data_files": "x.csv"}, "label_names": ["a", "b", "c"],
        "text_column": "text"}


def spec(**kw):
    return TaskSpec.from_dict({**BASE, **kw})


def test_defaults_and_properties():
    s = spec()
    assert s.kind == "text_classification" and s.primary_metric == "accuracy" and s.num_labels == 3
    assert s.missing_splits() == ["validation", "test"]
    assert spec(text_column=["title", "body"]).text_columns == ["title", "body"]
    t2t = spec(kind="text2text", verbalizer=["x", "y", "z"])
    assert t2t.targets == ["x", "y", "z"] and spec(kind="text2text").targets == ["a", "b", "c"]
    assert TaskSpec.from_dict(s.to_dict()) == s


@pytest.mark.parametrize("change, message", [
    ({"kind": "regression"}, "kind 'regression' is not one of"),
    ({"source": {}}, "`source.path` is required"),
    ({"label_names": ["a"]}, "needs at least 2 classes"),
    ({"label_names": ["a", "a"]}, "duplicates"),
    ({"text_column": None}, "need `text_column`"),
    ({"splits": {"train": "train", "dev": "dev"}}, r"keys \['dev'\] are not among"),
    ({"split_fractions": {"validation": 0.5, "test": 0.5}}, "sum below 1"),
    ({"split_fractions": {"validation": 0.1}}, r"missing splits \['test'\] have no `split_fractions`"),
    ({"metrics": ["bleu"]}, r"unknown metrics \['bleu'\]"),
    ({"metrics": ["f1"]}, "`f1` is binary"),
    ({"kind": "image_classification", "image_column": "img", "verbalizer": ["x", "y", "z"]},
     "only applies to text tasks"),
    ({"kind": "text2text", "verbalizer": ["x"]}, "has 1 entries for 3 labels"),
    ({"input_template": "no field"}, "must contain"),
    ({"input_template": "{text} {other}"}, "may only use the fields"),
    ({"max_examples": {"train": 0}}, "values >= 1"),
])
def test_invalid_specs_are_refused_with_the_field_named(change, message):
    with pytest.raises(ValueError, match=message):
        spec(**change)


def test_unknown_keys_are_refused():
    with pytest.raises(ValueError, match=r"my.yaml.*unknown task spec keys \['labels'\]"):
        TaskSpec.from_dict({**BASE, "labels": []}, origin="my.yaml")


def test_map_labels_by_name_index_offset_and_auto():
    s = spec(label_format="name")
    assert map_labels(["b", "c", "a"], s, "f").tolist() == [1, 2, 0]
    assert map_labels(np.array([1, 2, 3]), spec(label_offset=1), "f").tolist() == [0, 1, 2]
    assert map_labels(["2", " 0", 1.0], spec(), "f").tolist() == [2, 0, 1]
    assert map_labels(["c", "1"], spec(), "f").tolist() == [2, 1]
    digits = TaskSpec.from_dict({**BASE, "label_names": ["1", "2"]})
    assert map_labels(["2", "1"], digits, "f").tolist() == [1, 0]  # names win in auto mode
    assert map_labels(["2", "1"], TaskSpec.from_dict({**BASE, "label_names": ["1", "2"], "label_format": "index",
                                                      "label_offset": 1}), "f").tolist() == [1, 0]


def test_map_labels_errors_name_label_task_and_file():
    with pytest.raises(ValueError, match=r"task 't': label 'd' in 'x.csv' is not one of the label_names"):
        map_labels(["a", "d"], spec(label_format="name"), "'x.csv'")
    with pytest.raises(ValueError, match=r"label 3 in 'x.csv' is outside the 3 label_names"):
        map_labels(np.array([0, 3]), spec(), "'x.csv'")
    with pytest.raises(ValueError, match=r"label '5' .* after subtracting label_offset 1"):
        map_labels(["5"], spec(label_offset=1), "'x.csv'")
    with pytest.raises(ValueError, match=r"label 'maybe' in 'x.csv' is neither a label name"):
        map_labels(["maybe"], spec(), "'x.csv'")


def test_resolve_unknown_task_lists_known_ones():
    with pytest.raises(ValueError, match=r"unknown task 'sst3'; known tasks: agnews, banking77, .*sst2"):
        resolve_task("sst3")


def test_resolve_names_files_specs_and_user_dirs(tmp_path):
    assert resolve_task("trec").label_names == ["DESC", "ENTY", "ABBR", "HUM", "LOC", "NUM"]
    (tmp_path / "reviews.yaml").write_text(
        "name: reviews\nsource: {path: csv, data_files: r.csv}\nlabel_names: [neg, pos]\ntext_column: body\n"
    )
    assert "reviews" in known_tasks([tmp_path]) and "reviews" not in known_tasks()
    assert resolve_task("reviews", [str(tmp_path)]).text_column == "body"
    assert resolve_task(str(tmp_path / "reviews.yaml")).name == "reviews"
    assert resolve_task({**BASE}).name == "t"
    # A user file shadows a built-in of the same name.
    (tmp_path / "sst2.yaml").write_text(
        "name: sst2\nsource: {path: csv, data_files: s.csv}\nlabel_names: [n, p]\ntext_column: s\n"
    )
    assert resolve_task("sst2", [tmp_path]).text_column == "s"
    (tmp_path / "wrong.yaml").write_text("name: other\nsource: {path: csv}\nlabel_names: [a, b]\ntext_column: s\n")
    with pytest.raises(ValueError, match="`name` is 'other' but the file is named 'wrong'"):
        resolve_task("wrong", [tmp_path])
    with pytest.raises(ValueError, match="is not a directory"):
        resolve_task("x", [tmp_path / "nope"])


def test_jsonargparse_parses_names_and_inline_specs_in_a_list():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_argument("--tasks", type=list[str | TaskSpec])
    cfg = parser.parse_args(["--tasks", '[sst2, {name: mine, source: {path: csv, data_files: m.csv}, '
                                        'label_names: [a, b], text_column: txt, metrics: [accuracy, f1]}]'])
    tasks = parser.instantiate_classes(cfg).tasks
    assert tasks[0] == "sst2"
    assert isinstance(tasks[1], TaskSpec) and tasks[1].metrics == ["accuracy", "f1"]
    assert tasks[1].source == {"path": "csv", "data_files": "m.csv"}
