"""Every YAML in configs/ and recipes/ parses with the command its first line gives."""

import shlex
from pathlib import Path

import pytest

from neuroflow.commands.entry import main

ROOT = Path(__file__).resolve().parents[1]
YAMLS = sorted([*ROOT.glob("configs/**/*.yaml"), *ROOT.glob("recipes/**/*.yaml")])


def command_of(path: Path) -> list[str]:
    """The arguments after `python -m neuroflow` in the file's first-line comment."""
    first = path.read_text().splitlines()[0]
    prefix = "# python -m neuroflow "
    assert first.startswith(prefix), f"{path}: a config opens with the command that runs it, got {first!r}"
    args = shlex.split(first[len(prefix):])
    assert str(path.relative_to(ROOT)) in args, f"{path}: its first-line command does not use the file itself"
    return args


def test_there_are_configs():
    names = {str(p.relative_to(ROOT)) for p in YAMLS}
    assert {"configs/fit_minilm.yaml", "configs/fit_minilm_lora.yaml", "configs/model/minilm_lora.yaml"} <= names


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: str(p.relative_to(ROOT)))
def test_config_parses(path, monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(ROOT)
    args = command_of(path)
    if args[0] == "run":
        if "--slurm-out" in args:  # render into the test's folder, not into runs/
            args[args.index("--slurm-out") + 1] = str(tmp_path / "slurm")
        else:
            args.append("--dry-run")
        main([*args, "--output-dir", str(tmp_path)])
        out = capsys.readouterr().out
        assert "python -m neuroflow" in out or "submit with" in out
        return
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--print_config"])
    out = capsys.readouterr()
    assert exit_info.value.code in (0, None), out.err[-2000:]
    assert "model:" in out.out and "trainer:" in out.out
