"""A rerun after an interrupted fit resumes it from `last.ckpt`; `--force` (or a changed config)
starts it over."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import yaml

from neuroflow.commands.cli import main as cli_main
from neuroflow.experts import load_manifest
from neuroflow.pipeline import PipelineRunner, load_recipe
from neuroflow.pipeline.launch import StageFailed

RECIPE = """\
# python -m neuroflow run recipe.yaml
name: resume
backbone: {backbone}
data_dir: {data_dir}
tasks: [trec]
caps: {{train: 32, validation: 16, test: 16}}
output_dir: {out}
training:
  max_epochs: 2
  data: {{batch_size: 16, max_length: 24}}
  trainer: {{enable_progress_bar: false, enable_model_summary: false, num_sanity_val_steps: 0}}
baselines: {{pretrained: false, individual: false}}
"""


@pytest.fixture()
def recipe_path(tmp_path: Path, tiny_bert: str, shared_data_dir: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE.format(backbone=tiny_bert, data_dir=shared_data_dir, out=tmp_path / "out"))
    return path


def _runner(path: Path, launcher, **kwargs) -> PipelineRunner:  # noqa: ANN001
    return PipelineRunner(load_recipe(path, overrides=kwargs.pop("overrides", [])), only=["fit"], launcher=launcher,
                          echo=lambda _: None, **kwargs)


def _interrupt(checkpoints: Path):  # noqa: ANN202
    def launcher(stage, config_path, log_path) -> None:  # noqa: ANN001
        checkpoints.mkdir(parents=True, exist_ok=True)
        (checkpoints / "last.ckpt").write_bytes(b"state of epoch 0")
        (checkpoints / "best.ckpt").write_bytes(b"best of epoch 0")
        raise StageFailed(f"stage {stage.name}: killed")
    return launcher


def test_rerun_resumes_and_force_starts_over(recipe_path: Path, tmp_path: Path) -> None:
    checkpoints = tmp_path / "out" / "fit" / "trec" / "checkpoints"
    seen: list[tuple[list[str], bool]] = []

    def record(stage, config_path, log_path) -> None:  # noqa: ANN001
        seen.append((list(stage.extra_args), (checkpoints / "last.ckpt").is_file()))

    with pytest.raises(StageFailed):
        _runner(recipe_path, _interrupt(checkpoints)).run()
    _runner(recipe_path, record).run()
    assert seen == [(["--ckpt_path", str(checkpoints / "last.ckpt")], True)]  # resumed, checkpoint kept

    seen.clear()
    with pytest.raises(StageFailed):
        _runner(recipe_path, _interrupt(checkpoints)).run()
    _runner(recipe_path, record, force=True).run()
    assert seen == [([], False)]  # --force: a clean start

    seen.clear()
    with pytest.raises(StageFailed):
        _runner(recipe_path, _interrupt(checkpoints)).run()
    _runner(recipe_path, record, overrides=["training.max_epochs=3"]).run()
    assert seen == [([], False)]  # another config: its checkpoint is not this run's


def test_resumed_fit_continues_where_it_stopped(recipe_path: Path, tmp_path: Path) -> None:
    """The real fit, interrupted after its first epoch, trains only the second one on rerun."""
    fit_dir = tmp_path / "out" / "fit" / "trec"

    def first_epoch_then_killed(stage, config_path, log_path) -> None:  # noqa: ANN001
        config = yaml.safe_load(Path(config_path).read_text())
        config["trainer"]["max_epochs"] = 1
        # no collector: the process "dies" before the expert is written
        config["trainer"]["callbacks"] = [c for c in config["trainer"]["callbacks"]
                                          if not c["class_path"].endswith("ExpertCollector")]
        partial = tmp_path / "partial.yaml"
        partial.write_text(yaml.safe_dump(config))
        cli_main(["fit", "--config", str(partial)])
        raise StageFailed(f"stage {stage.name}: killed")

    with pytest.raises(StageFailed):
        _runner(recipe_path, first_epoch_then_killed).run()
    first = torch.load(fit_dir / "checkpoints" / "last.ckpt", weights_only=True)

    _runner(recipe_path, "inprocess", entry_point=cli_main).run()
    state = torch.load(fit_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 2 * first["global_step"]  # one more epoch of steps, not two
    with open(fit_dir / "logs" / "version_1" / "metrics.csv") as handle:
        assert {row["epoch"] for row in csv.DictReader(handle)} == {"1"}  # epoch 0 was not trained again
    assert [e["task"] for e in load_manifest(tmp_path / "out" / "experts")] == ["trec"]
    assert (fit_dir / "checkpoints" / "best.ckpt").is_file()
    assert not list((fit_dir / "checkpoints").glob("best-v*.ckpt"))
