"""Methods are configured from YAML by `class_path`: their signatures are the schema."""

from __future__ import annotations

import pytest
from jsonargparse import ArgumentParser

from neuroflow.merging import DARE, TIES, MergeMethod, NeuroMerging


def parse(config: str):
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(MergeMethod, "method")
    return parser.instantiate(parser.parse_args(["--method", config])).method


def test_class_path_configs_instantiate() -> None:
    nm = parse('{"class_path": "neuroflow.merging.NeuroMerging", "init_args": {"mask_rate": 0.9, "lambda_2": 2.0}}')
    assert isinstance(nm, NeuroMerging) and nm.hparams() == {"mask_rate": 0.9, "lambda_1": 0.0, "lambda_2": 2.0}
    assert parse('{"class_path": "NeuroMerging"}').lambda_2 == "auto"
    dare = parse('{"class_path": "neuroflow.merging.DARE", "init_args": {"then": "ties", "drop_rate": 0.5}}')
    assert isinstance(dare, DARE) and dare.then == "ties" and dare.drop_rate == 0.5
    assert isinstance(parse('{"class_path": "TIES", "init_args": {"scope": "tensor"}}'), TIES)


def test_invalid_choice_is_rejected_by_the_schema() -> None:
    with pytest.raises(Exception, match="scope"):
        parse('{"class_path": "TIES", "init_args": {"scope": "layer"}}')
