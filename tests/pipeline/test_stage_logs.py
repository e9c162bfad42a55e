"""The runner logs with levels, and every in-process stage's output lands in its own log file."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from neuroflow.pipeline import PipelineRunner, load_recipe
from neuroflow.pipeline.launch import StageFailed, run_inprocess
from neuroflow.pipeline.plan import Stage

RECIPE = """\
# python -m neuroflow run recipe.yaml
name: logged
backbone: {backbone}
tasks: [trec]
output_dir: {out}
"""


def test_runner_progress_goes_to_the_logger(tmp_path: Path, tiny_bert: str, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE.format(backbone=tiny_bert, out=tmp_path / "out"))
    table: list[str] = []
    with caplog.at_level(logging.INFO, logger="neuroflow"):
        PipelineRunner(load_recipe(path), only=["fit"], launcher=lambda s, c, l: None, echo=table.append).run()
    messages = [(r.name, r.levelno, r.getMessage()) for r in caplog.records if r.name.startswith("neuroflow")]
    assert ("neuroflow.pipeline.runner", logging.INFO,
            f"fit_trec: python -m neuroflow fit --config {tmp_path / 'out' / 'configs' / 'fit_trec.yaml'}") in messages
    assert any(m.startswith("fit_trec done in") for _, _, m in messages)
    assert table == []  # `echo` only gets the final table (no report group here)


def test_inprocess_stage_output_is_teed_into_its_log(tmp_path: Path) -> None:
    def entry_point(args: list[str]) -> None:
        print("printed by the stage")
        logging.getLogger("neuroflow.somewhere").warning("logged by the stage")
        for i in range(1, 4):  # a progress bar redrawing its line
            sys.stderr.write(f"\r\x1b[32mmerging: {i}/3\x1b[0m")
        sys.stderr.write("\n")
        raise ValueError("the stage's own reason")

    stage = Stage("merge_x", "merge", {}, kind="merge")
    log_path = tmp_path / "logs" / "merge_x.log"
    handler = logging.StreamHandler(sys.stderr)  # like Lightning's: holds the stream it was given
    logging.getLogger("neuroflow").addHandler(handler)
    try:
        with pytest.raises(StageFailed, match=r"failed: ValueError: the stage's own reason \[log: .*merge_x.log\]"):
            run_inprocess(stage, tmp_path / "merge_x.yaml", log_path, entry_point)
    finally:
        logging.getLogger("neuroflow").removeHandler(handler)
    lines = log_path.read_text().splitlines()
    assert "printed by the stage" in lines
    assert "logged by the stage" in lines
    assert "merging: 3/3" in lines and not any("1/3" in line or "\x1b" in line for line in lines)
    assert sys.stdout is not None and not hasattr(sys.stdout, "console")  # streams restored
