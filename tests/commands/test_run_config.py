"""The resolved `config.yaml` of a run: in its own output folder, never over a file neuroflow did
not write, and with the values that really ran (`--output_dir` included)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from tiny_experts import data_config, merge_config

from neuroflow.commands.cli import main

USER_FILE = "# my own notes, not a neuroflow config\nkeep: me\n"


def _body(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_merge_config_goes_to_its_output_dir_only(tmp_path: Path, tiny_experts: Path, tiny_bert: str,
                                                  shared_data_dir: str, data_cache_dir: str) -> None:
    config = merge_config(tiny_experts, tiny_bert, shared_data_dir, data_cache_dir, tmp_path)
    root = Path(config["trainer"]["default_root_dir"])
    root.mkdir()
    (root / "config.yaml").write_text(USER_FILE)
    path = tmp_path / "merge.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "elsewhere"
    main(["merge", "--config", str(path), "--output_dir", str(out), "--evaluate", "false"])

    assert (root / "config.yaml").read_text() == USER_FILE          # the user's file is untouched
    saved = out / "config.yaml"
    assert saved.read_text().startswith("# neuroflow: the resolved config of `python -m neuroflow merge`")
    assert _body(saved)["output_dir"] == str(out)                    # the provenance of this output
    assert (out / "merge_card.json").is_file()

    # A second merge into the same folder replaces the result and the config neuroflow wrote there
    main(["merge", "--config", str(path), "--output_dir", str(out), "--evaluate", "false",
          "--model.init_args.method.init_args.mask_rate", "0.5"])
    assert _body(saved)["model"]["init_args"]["method"]["init_args"]["mask_rate"] == 0.5
    assert sorted(p.name for p in out.glob("config*.yaml")) == ["config.yaml"]


def test_test_config_goes_to_the_report_dir_not_the_working_dir(tmp_path: Path, tiny_experts: Path, tiny_bert: str,
                                                                shared_data_dir: str, data_cache_dir: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text(USER_FILE)  # e.g. a config kept in the working directory
    report = tmp_path / "report"
    report.mkdir()
    (report / "config.yaml").write_text(USER_FILE)
    config = {
        "trainer": {"accelerator": "cpu", "devices": 1, "logger": False, "enable_progress_bar": False,
                    "enable_model_summary": False},
        "model": {"class_path": "neuroflow.evaluation.ExpertsModule",
                  "init_args": {"experts": str(tiny_experts), "report_dir": str(report)}},
        "data": data_config(tiny_bert, shared_data_dir, data_cache_dir, ["trec", "sst2"]),
    }
    path = tmp_path / "test.yaml"
    path.write_text(yaml.safe_dump(config))
    main(["test", "--config", str(path)])
    assert (tmp_path / "config.yaml").read_text() == USER_FILE
    assert (report / "config.yaml").read_text() == USER_FILE         # not ours: kept
    numbered = report / "config-1.yaml"
    assert _body(numbered)["model"]["init_args"]["report_dir"] == str(report)
    assert (report / "report.json").is_file()
