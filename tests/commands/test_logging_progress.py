"""Progress (tqdm on a terminal, log lines without one, nothing under --quiet) and logging (one
`neuroflow` logger with levels, known noise silenced)."""

from __future__ import annotations

import logging
import sys
import tomllib
import warnings
from pathlib import Path

import pytest
import yaml
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.demos.boring_classes import BoringModel
from tiny_experts import data_config

from neuroflow import progress as progress_module
from neuroflow.commands import trainer as trainer_module
from neuroflow.commands.entry import help_text, main
from neuroflow.commands.logs import configure_logging, silence_known_noise
from neuroflow.commands.trainer import LogProgressBar, NeuroTrainer

REPO = Path(__file__).resolve().parents[2]


def _trainer(**kwargs) -> NeuroTrainer:
    return NeuroTrainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_model_summary=False, **kwargs)


def test_trainer_progress_follows_terminal_quiet_and_the_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trainer_module, "interactive", lambda: False)
    assert isinstance(_trainer().progress_bar_callback, LogProgressBar)     # a log: lines, not a bar
    monkeypatch.setattr(trainer_module, "interactive", lambda: True)
    bar = _trainer().progress_bar_callback
    assert type(bar) is TQDMProgressBar                                       # one style: tqdm, not rich
    assert _trainer(enable_progress_bar=False).progress_bar_callback is None  # the flag is obeyed
    configure_logging(logging.WARNING)                                        # --quiet
    assert _trainer().progress_bar_callback is None


def test_log_progress_bar_writes_periodic_lines(caplog: pytest.LogCaptureFixture) -> None:
    trainer = _trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=2, num_sanity_val_steps=0,
                       callbacks=[LogProgressBar(interval=0)])
    with caplog.at_level(logging.INFO, logger="neuroflow.progress"):
        trainer.fit(BoringModel())
    lines = [r.getMessage() for r in caplog.records if r.name == "neuroflow.progress"]
    assert "epoch 0:  33% 1/3" in lines[0] and any(line.startswith("epoch 0: 100% 3/3") for line in lines), lines
    assert any(line.startswith("validation 0: 100% 2/2") for line in lines), lines
    assert all("\r" not in line and "█" not in line for line in lines)


def test_progress_helper(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(progress_module, "interactive", lambda: False)
    with caplog.at_level(logging.INFO, logger="neuroflow.progress"):
        for _ in progress_module.progress(range(3), desc="statistics (ties)", unit="tensor", interval=0):
            pass
    assert any(r.getMessage().startswith("statistics (ties): 100% 3/3") for r in caplog.records)
    assert progress_module.progress(range(3), enabled=False).disable
    monkeypatch.setattr(progress_module, "interactive", lambda: True)
    assert type(progress_module.progress(total=3)).__name__ == "tqdm"
    configure_logging(logging.WARNING)
    assert progress_module.progress(total=3).disable


def test_quiet_hides_info_and_progress(tmp_path: Path, tiny_experts: Path, tiny_bert: str, shared_data_dir: str,
                                       data_cache_dir: str, capsys: pytest.CaptureFixture) -> None:
    config = {"trainer": {"accelerator": "cpu", "devices": 1, "logger": False, "enable_model_summary": False},
              "model": {"class_path": "neuroflow.evaluation.ExpertsModule",
                        "init_args": {"experts": str(tiny_experts), "report_dir": str(tmp_path / "report")}},
              "data": data_config(tiny_bert, shared_data_dir, data_cache_dir, ["trec", "sst2"])}
    path = tmp_path / "test.yaml"
    path.write_text(yaml.safe_dump(config))
    main(["test", "--config", str(path)])
    assert "[neuroflow] config saved to" in capsys.readouterr().err
    main(["test", "--config", str(path), "--quiet"])
    assert "[neuroflow]" not in capsys.readouterr().err


def test_help_lists_every_command_under_its_real_name(capsys: pytest.CaptureFixture) -> None:
    main(["--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m neuroflow <command>") and out == help_text()
    for command in ("fit", "validate", "test", "merge", "run"):
        assert f"\n  {command} " in out
    with pytest.raises(SystemExit):
        main(["merge", "--help"])
    out = capsys.readouterr().out
    assert "usage: python -m neuroflow [options] merge" in out and "__main__" not in out


def test_lightning_tips_are_dropped() -> None:
    from lightning.pytorch.utilities.rank_zero import rank_zero_info

    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    target = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    target.addHandler(handler)
    try:
        configure_logging()
        rank_zero_info("💡 Tip: For seamless cloud logging, try installing litlogger")
        rank_zero_info("GPU available: False")
    finally:
        target.removeHandler(handler)
    assert seen == ["GPU available: False"]


def test_leafspec_deprecation_from_lightning_is_silenced() -> None:
    from torch.utils._pytree import LeafSpec

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silence_known_noise()
        LeafSpec()
        warnings.warn("something else", FutureWarning)
    assert [str(w.message) for w in caught] == ["something else"]


def test_no_lightning_args_warning_per_stage(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_bert: str,
                                            capsys: pytest.CaptureFixture) -> None:
    from neuroflow.commands.cli import main as cli_main

    config = tmp_path / "fit.yaml"
    config.write_text(yaml.safe_dump({"model": {"class_path": "neuroflow.models.MultiTaskModule",
                                                "init_args": {"backbone": tiny_bert}},
                                      "data": {"class_path": "neuroflow.data.MultiTaskDataModule",
                                               "init_args": {"tasks": ["trec"], "tokenizer": tiny_bert}}}))
    monkeypatch.setattr(sys, "argv", ["python -m neuroflow", "run", "recipe.yaml"])  # as inside `run`
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(SystemExit):
            cli_main(["fit", "--config", str(config), "--print_config"])
    assert not [w for w in caught if "LightningCLI's args parameter" in str(w.message)]


def test_pyproject_license_is_an_spdx_string() -> None:
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    assert tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["license"] == "Apache-2.0"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        apply_configuration(Distribution(), REPO / "pyproject.toml")
    assert not [w for w in caught if "license" in str(w.message)]
