"""Errors of `python -m neuroflow ...`: the one-line cause first, the details only with --verbose,
the valid choices for a wrong class, the nearest name for a misspelled key, exit status 2."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml
from tiny_experts import merge_config

from neuroflow.commands.entry import main
from neuroflow.commands.logs import pop_global_flags


def _write(tmp_path: Path, config: dict) -> str:
    path = tmp_path / "merge.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _fails(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main(args)
    return info.value.code, capsys.readouterr().err


def _first_error(err: str) -> str:
    return next(line for line in err.splitlines() if ": error: " in line)


@pytest.fixture()
def merge_yaml(tmp_path: Path, tiny_bert: str, shared_data_dir: str, data_cache_dir: str) -> str:
    # Parse errors come before the experts are read: a folder that does not exist is fine here.
    return _write(tmp_path, merge_config(tmp_path / "no_experts", tiny_bert, shared_data_dir, data_cache_dir, tmp_path))


def test_wrong_method_name_lists_the_valid_ones(merge_yaml: str, capsys: pytest.CaptureFixture) -> None:
    code, err = _fails(["merge", "--config", merge_yaml, "--model.init_args.method", "neuroflow.merging.Ties"], capsys)
    assert code == 2
    line = _first_error(err)
    assert "model.init_args.method: no MergeMethod named 'neuroflow.merging.Ties'" in line
    assert "did you mean 'neuroflow.merging.TIES'?" in line
    for valid in ("neuroflow.merging.NeuroMerging", "neuroflow.merging.TaskArithmetic", "neuroflow.merging.DARE"):
        assert valid in line
    assert "Given value" not in err and len(err) < 1500  # not jsonargparse's Union dump


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--model.init_args.methd", "x"], "model.init_args: unknown key 'methd' for neuroflow.evaluation.MergeModule; "
                                           "did you mean 'method'?"),
        (["--trainer.max_epoch", "3"], "did you mean '--trainer.max_epochs'?"),
    ],
    ids=["class-init-arg", "trainer-flag"],
)
def test_misspelled_key_suggests_the_nearest(merge_yaml: str, args: list[str], expected: str,
                                             capsys: pytest.CaptureFixture) -> None:
    code, err = _fails(["merge", "--config", merge_yaml, *args], capsys)
    assert code == 2 and expected in _first_error(err)


def test_misspelled_key_in_a_config_file(tmp_path: Path, tiny_bert: str, shared_data_dir: str, data_cache_dir: str,
                                         capsys: pytest.CaptureFixture) -> None:
    config = merge_config(tmp_path / "x", tiny_bert, shared_data_dir, data_cache_dir, tmp_path)
    config["model"]["init_args"]["method"]["init_args"] = {"mask_rat": 0.5}
    code, err = _fails(["merge", "--config", _write(tmp_path, config)], capsys)
    assert code == 2
    assert ("model.init_args.method.init_args: unknown key 'mask_rat' for neuroflow.merging.TIES; "
            "did you mean 'mask_rate'?") in _first_error(err)


def test_empty_experts_folder_one_line_and_verbose_details(tmp_path: Path, tiny_bert: str, shared_data_dir: str,
                                                           data_cache_dir: str, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    config = _write(tmp_path, merge_config(tmp_path / "empty", tiny_bert, shared_data_dir, data_cache_dir, tmp_path))
    code, err = _fails(["merge", "--config", config], capsys)
    assert code == 2
    assert _first_error(err) == f"python -m neuroflow merge: error: no experts in {tmp_path / 'empty'} " \
                                f"(no */expert.json and no manifest.json)"
    assert "Given value" not in err and "Traceback" not in err and "--verbose" in err
    code, err = _fails(["merge", "--config", config, "--verbose"], capsys)
    assert code == 2
    assert "Does not validate against any of the Union subtypes" in err and "Traceback" in err
    assert not (tmp_path / "merged").exists()


def test_experts_from_two_bases(tmp_path: Path, mixed_base_experts: Path, tiny_bert: str, shared_data_dir: str,
                                data_cache_dir: str, capsys: pytest.CaptureFixture) -> None:
    config = _write(tmp_path, merge_config(mixed_base_experts, tiny_bert, shared_data_dir, data_cache_dir, tmp_path))
    code, err = _fails(["merge", "--config", config], capsys)
    assert code == 2
    line = _first_error(err)
    assert "fingerprint" in line.lower() or "base" in line.lower()
    assert "Given value" not in err and "Traceback" not in err


def test_missing_data_folder(tmp_path: Path, tiny_experts: Path, tiny_bert: str, data_cache_dir: str,
                             capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "no_data_here"
    config = _write(tmp_path, merge_config(tiny_experts, tiny_bert, str(missing), data_cache_dir, tmp_path))
    code, err = _fails(["merge", "--config", config], capsys)
    assert code == 2
    line = _first_error(err)
    assert str(missing) in line and "not found" in line
    assert "Given value" not in err


def test_unknown_command(capsys: pytest.CaptureFixture) -> None:
    code, err = _fails(["merg"], capsys)
    assert code == 2 and "unknown command 'merg'; did you mean 'merge'?" in err


def test_verbose_and_quiet_are_accepted_everywhere() -> None:
    assert pop_global_flags(["fit", "--config", "a.yaml", "--verbose"]) == (["fit", "--config", "a.yaml"], logging.DEBUG)
    assert pop_global_flags(["--quiet", "run", "r.yaml"]) == (["run", "r.yaml"], logging.WARNING)
    # Lightning's own `test --verbose BOOL` (print the metrics table) is left to it
    assert pop_global_flags(["test", "--verbose", "false"]) == (["test", "--verbose", "false"], None)
    for command in ("fit", "validate", "test", "merge", "run"):
        with pytest.raises(SystemExit) as info:
            main([command, "--verbose", "--help"])
        assert info.value.code in (0, None), command


def test_a_command_with_its_own_quiet_flag_receives_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import neuroflow.analysis.command as analyze

    received: list[list[str]] = []
    monkeypatch.setattr(analyze, "main", lambda argv: received.append(argv))
    main(["--verbose", "analyze", "experts", "--quiet"])
    assert received == [["experts", "--quiet"]]  # its own --quiet, not the --verbose it does not have
    assert logging.getLogger("neuroflow").level == logging.WARNING  # and the logging follows it too
