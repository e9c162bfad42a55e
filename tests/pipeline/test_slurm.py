"""SLURM scripts: they render from a recipe, are valid bash, and every command in them parses."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from neuroflow.commands.cli import main as cli_main
from neuroflow.pipeline import load_recipe, plan_recipe, render_slurm
from neuroflow.commands.run import main as run_main
from neuroflow.statistics.command import build_parser as stats_parser

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def rendered(tmp_path: Path, tiny_bert: str) -> dict[str, Path]:
    recipe = load_recipe(
        REPO / "recipes" / "slurm" / "text8_gpu.yaml",
        overrides=[f"backbone={tiny_bert}", f"output_dir={tmp_path / 'run'}", f"slurm.workdir={REPO}",
                   "slurm.account=proj42", "multitask.enabled=true"],
        tasks=["trec", "sst2"],
    )
    return render_slurm(recipe, plan_recipe(recipe), tmp_path / "slurm")


def _bash_ok(path: Path) -> None:
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, f"{path}: {result.stderr}"


def test_scripts_render_and_are_valid_bash(rendered: dict[str, Path], tmp_path: Path) -> None:
    fit = rendered["fit_array.sbatch"].read_text()
    merge = rendered["merge_eval.sbatch"].read_text()
    submit = rendered["submit.sh"].read_text()
    for name in ("fit_array.sbatch", "merge_eval.sbatch", "submit.sh"):
        _bash_ok(rendered[name])
    # two experts + the joint model = three array elements; one process per GPU
    assert "#SBATCH --array=0-2" in fit
    assert "#SBATCH --ntasks-per-node=4" in fit and "#SBATCH --gpus-per-node=4" in fit
    assert "#SBATCH --partition=gpu" in fit and "#SBATCH --account=proj42" in fit
    assert '--trainer.devices "${SLURM_NTASKS_PER_NODE}" --trainer.num_nodes "${SLURM_NNODES}"' in fit
    assert 'srun python -m neuroflow fit --config "${CONFIG}" "${DDP_ARGS[@]}" --trainer.strategy "${STRATEGY}"' in fit
    # plain DDP for the experts; the joint model needs unused-parameter detection (other tasks' heads)
    assert "STRATEGIES=(ddp ddp ddp_find_unused_parameters_true)" in fit
    assert fit.index("source .venv/bin/activate") < fit.index("\nset -u\n")
    assert "--dependency=afterok:\"${FIT_JOB}\"" in submit and "sbatch --parsable" in submit
    for stage in ("test_pretrained", "test_individual", "test_multitask", "merge_ties", "merge_neuromerging_val"):
        assert f"configs/{stage}.yaml" in merge
    assert f"python -m neuroflow run {rendered['recipe.yaml']} --only report" in merge
    # the joint model is tested from its best checkpoint, like a local run
    assert re.search(r"srun python -m neuroflow test --config \S+/test_multitask.yaml --ckpt_path \S+/fit/multitask/"
                     r"checkpoints/best.ckpt \"\$\{DDP_ARGS\[@\]\}\"", merge)


def test_array_elements_skip_collected_experts(rendered: dict[str, Path], tmp_path: Path) -> None:
    """Run the array script with fake `srun`, `SLURM_*` variables and one expert already present."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/bash\necho "SRUN $*" >> "$SRUN_LOG"\n')
    (bin_dir / "srun").chmod(0o755)
    marker = tmp_path / "run" / "experts" / "trec" / "expert.json"
    marker.parent.mkdir(parents=True)
    marker.write_text("{}")
    script = rendered["fit_array.sbatch"].read_text().replace("source .venv/bin/activate", "true")
    runnable = tmp_path / "fit.sh"
    runnable.write_text(script)
    log = tmp_path / "srun.log"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "SLURM_NTASKS_PER_NODE": "4", "SLURM_NNODES": "2",
           "SRUN_LOG": str(log), "HOME": str(tmp_path)}
    outs = []
    for index in ("0", "1", "2"):
        result = subprocess.run(["bash", str(runnable)], env={**env, "SLURM_ARRAY_TASK_ID": index},
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        outs.append(result.stdout)
    assert "skip" in outs[0] and "trec" in outs[0]
    calls = log.read_text().splitlines()
    assert len(calls) == 2 and "configs/fit_sst2.yaml" in calls[0] and "configs/fit_multitask.yaml" in calls[1]
    assert calls[0].endswith("--trainer.accelerator gpu --trainer.devices 4 --trainer.num_nodes 2 "
                             "--trainer.strategy ddp --trainer.strategy ddp")
    assert calls[1].endswith("--trainer.strategy ddp_find_unused_parameters_true")


def _neuroflow_commands(script: str) -> list[list[str]]:
    out = []
    for line in script.splitlines():
        match = re.match(r"\s*(?:srun (?:--\S+ )*)?python -m neuroflow (.*)$", line)
        if match:
            text = (match.group(1).replace('"${DDP_ARGS[@]}"', "--trainer.accelerator cpu --trainer.devices 1 "
                                           "--trainer.num_nodes 1 --trainer.strategy ddp"))
            out.append(shlex.split(text))
    return out


def test_every_command_parses(rendered: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    fit_configs = re.search(r"CONFIGS=\((.*)\)", rendered["fit_array.sbatch"].read_text()).group(1).split()
    commands = [["fit", "--config", c, "--trainer.accelerator", "cpu", "--trainer.devices", "1",
                 "--trainer.num_nodes", "1", "--trainer.strategy", "ddp"] for c in fit_configs]
    commands += _neuroflow_commands(rendered["merge_eval.sbatch"].read_text())
    # fits; joint, pretrained, individual tests; a statistics pass per expert; 14 merges; report
    assert len(commands) == 3 + 3 + 2 + 14 + 1
    assert [a[0] for a in commands].count("stats") == 2
    for args in commands:
        if args[0] == "run":
            run_main([*args[1:], "--dry-run"])
            continue
        if args[0] == "stats":  # parsed as the command parses it (running it needs trained experts)
            parsed = stats_parser().parse_args(args[1:])
            assert parsed.accelerator == "gpu" and parsed.kinds == "regmean,fisher" and parsed.max_batches == 8
            continue
        with pytest.raises(SystemExit) as info:
            cli_main([*args, "--print_config"])
        assert info.value.code in (0, None), args
        printed = yaml.safe_load(capsys.readouterr().out)
        assert printed["trainer"]["strategy"] == "ddp" and printed["trainer"]["num_nodes"] == 1


def test_cli_renders(tmp_path: Path, tiny_bert: str, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "s"
    run_main([str(REPO / "recipes" / "demo.yaml"), "--set", f"backbone={tiny_bert}",
              "--output-dir", str(tmp_path / "demo"), "--slurm-out", str(out)])
    assert "submit with: bash" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["configs", "fit_array.sbatch", "merge_eval.sbatch",
                                                     "recipe.yaml", "submit.sh"]
    assert shutil.which("bash")
    _bash_ok(out / "fit_array.sbatch")
