"""The resolved config of a run, written next to what the run produced, never over another file.

Lightning's `SaveConfigCallback` writes `config.yaml` into `trainer.log_dir` (the
`default_root_dir` without a logger) before anything runs, and neuroflow used it with
`overwrite=True`: a `config.yaml` the user kept there, or an earlier result's, was replaced, and a
merge whose `--output_dir` differs from `default_root_dir` left its config next to another
result. Here:

- `fit` writes it into the run's log dir when training starts (the config explains the logs and
  checkpoints, also of a run that fails); a file already there is kept and the new one is
  numbered (`config-1.yaml`, ...), e.g. for a resumed run.
- `merge`, `test` and `validate` write it into their output folder (the merge's `output_dir`, the
  report folder) once that output is complete, replacing only a config neuroflow wrote there.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback

from neuroflow.atomic import atomic_write_text

log = logging.getLogger(__name__)

CONFIG_NAME = "config.yaml"
_MARK = "# neuroflow: the resolved config of"
# Configs written by earlier versions (LightningCLI's dump header) are neuroflow's too.
_OURS = (_MARK, "# lightning.pytorch==")


def _is_ours(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.readline().startswith(_OURS)
    except (OSError, UnicodeDecodeError):
        return False


def _free_name(folder: Path) -> Path:
    n = 1
    while (folder / f"config-{n}.yaml").exists():
        n += 1
    return folder / f"config-{n}.yaml"


def write_run_config(parser: Any, config: Any, folder: str | Path, command: str, replace_ours: bool) -> Path:
    """Write the resolved `config` of `python -m neuroflow <command>` into `folder`.

    Args:
        parser: the subcommand's parser (its `dump` gives the complete YAML).
        config: the subcommand's parsed config.
        folder: the run's output folder (created).
        command: the subcommand, for the file's header.
        replace_ours: replace a `config.yaml` that neuroflow wrote (the output it describes was
            just replaced too); a file neuroflow did not write is never replaced.

    Returns:
        the file written: `config.yaml`, or the next free `config-<n>.yaml`.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / CONFIG_NAME
    if target.exists() and not (replace_ours and _is_ours(target)):
        target = _free_name(folder)
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    header = (f"{_MARK} `python -m neuroflow {command}` ({stamp})\n"
              f"# rerun: python -m neuroflow {command} --config {target}\n")
    atomic_write_text(target, header + parser.dump(config, skip_none=False))
    log.info("config saved to %s", target)
    return target


class RunConfigSaver(SaveConfigCallback):
    """Writes a fit's resolved config into its log dir when it starts (see the module docstring).

    Other subcommands write theirs after they finish (`NeuroflowCLI`); this callback ignores them.
    """

    def __init__(self, parser: Any, config: Any, config_filename: str = CONFIG_NAME, overwrite: bool = False,
                 multifile: bool = False, save_to_log_dir: bool = True) -> None:
        # Lightning's own writer is off (`save_to_log_dir=False`): setup() below replaces it.
        super().__init__(parser, config, config_filename, overwrite=False, multifile=multifile, save_to_log_dir=False)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.already_saved or stage != "fit":
            return
        log_dir = trainer.log_dir or trainer.default_root_dir  # every rank: log_dir broadcasts
        if trainer.is_global_zero:
            write_run_config(self.parser, self.config, log_dir, "fit", replace_ours=False)
        self.already_saved = True

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Unused: `setup` writes the file."""


def output_folder(trainer: Trainer, model: Any) -> Path | None:
    """Where a test/validate run's outputs are: the model's or a callback's `report_dir`, else the
    logger's log dir; None when the run writes nothing of its own."""
    for owner in (model, *trainer.callbacks):
        report_dir = getattr(owner, "report_dir", None)
        if isinstance(report_dir, (str, Path)) and str(report_dir):
            return Path(report_dir)
    if trainer.loggers:
        return Path(trainer.log_dir) if trainer.log_dir else None
    return None
