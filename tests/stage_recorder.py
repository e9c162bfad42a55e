"""The pipeline tests' launcher: stages run in this process through the `run` command's own
dispatcher (`neuroflow.commands.run.stage_main`), and the names of those that really ran are kept."""

from __future__ import annotations

from pathlib import Path

from neuroflow.commands.run import stage_main
from neuroflow.pipeline.launch import run_inprocess
from neuroflow.pipeline.plan import Stage


class Recorder:
    """The in-process launcher, recording which stages really ran."""

    def __init__(self) -> None:
        self.ran: list[str] = []

    def __call__(self, stage: Stage, config_path: Path, log_path: Path) -> None:
        self.ran.append(stage.name)
        run_inprocess(stage, config_path, log_path, stage_main)
