"""The causal-LM recipes: the paper's LLaMA-2 setting parses, plans every stage, renders its SLURM
scripts (every command in them parses), and its tiny twin runs end to end; the demo plans.

The twin is the paper recipe itself with only the model and the data swapped (`--set` /
`--override`): a tiny LLaMA for LLaMA-2-7B, local JSON-lines files with the hub datasets' columns
for the experts' data, and local lm-eval tasks under the real tasks' names (`cmmlu`,
`gsm8k_cot_zeroshot`, `humaneval`) found through `include_path` instead of lm-eval's own index.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from neuroflow.commands.cli import main as cli_main
from neuroflow.commands.run import main as run_main
from neuroflow.evaluation.report import load_report
from neuroflow.pipeline import PipelineRunner, load_recipe, plan_recipe, render_slurm
from neuroflow.pipeline.launch import cli_args, write_config

REPO = Path(__file__).resolve().parents[2]
PAPER = REPO / "recipes" / "paper_llama.yaml"
SLURM = REPO / "recipes" / "slurm" / "paper_llama.yaml"
DEMO = REPO / "recipes" / "demo_causal.yaml"
MERGES = ["averaging", "task_arithmetic", "ties", "dare_ties", "neuromerging", "neuromerging_lite"]
CALLBACK = "neuroflow.evaluation.LmEvalCallback"


def _lm_eval_init(stage_config: dict[str, Any]) -> dict[str, Any]:
    (callback,) = [c for c in stage_config["trainer"].get("callbacks", []) if c["class_path"] == CALLBACK]
    return callback["init_args"]


def test_paper_recipe_is_the_papers_setting(tmp_path: Path) -> None:
    recipe = load_recipe(PAPER, overrides=[f"output_dir={tmp_path / 'out'}"])
    assert recipe.backbone == "meta-llama/Llama-2-7b-hf" and recipe.training.mode == "lora"
    assert recipe.task_names == ["chinese", "math", "code"]
    assert {t: e["source"]["path"] for t, e in recipe.tasks.items()} == {
        "chinese": "shibing624/alpaca-zh", "math": "meta-math/MetaMathQA", "code": "sahil2801/CodeAlpaca-20k"}
    assert [m.name for m in recipe.merges] == MERGES
    lite = {m.name: m for m in recipe.merges}["neuromerging_lite"].method["init_args"]
    assert lite == {"mask_rate": 0.9, "lambda_1": 0.0, "lambda_2": 2.9}
    (callback,) = recipe.evaluation.trainer["callbacks"]
    init = callback["init_args"]
    assert [(t["name"], t["expert"]) for t in init["tasks"]] == [
        ("cmmlu", "chinese"), ("gsm8k_cot_zeroshot", "math"), ("humaneval", "code")]
    assert init["tasks"][0]["num_fewshot"] == 5 and init["tasks"][1]["filter"] == "flexible-extract"
    # the merges are normalized by the experts' own lm-eval rows, wherever the output goes
    assert init["reference"] == f"{tmp_path / 'out'}/eval/individual"
    text = PAPER.read_text()
    for hub_id in ("hfl/chinese-llama-2-7b", "meta-math/MetaMath-7B-V1.0", "codellama/CodeLlama-7b-hf"):
        assert re.search(rf"{re.escape(hub_id)}.*# uncertain:", text), f"{hub_id} is flagged"


def test_paper_recipe_plans_every_stage_and_its_configs_parse(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    recipe = load_recipe(PAPER, overrides=[f"output_dir={tmp_path / 'out'}"])
    planner = plan_recipe(recipe)
    stages = planner.stages()
    assert [s.name for s in stages] == ["fit_chinese", "fit_math", "fit_code", "test_pretrained", "test_individual",
                                        *[f"merge_{m}" for m in MERGES]]
    math = planner.specs["math"]
    assert math["kind"] == "instruction" and math["metrics"] == ["numeric_match", "exact_match"]
    for stage in stages[3:]:  # every scored row also runs the lm-eval tasks
        assert [t["name"] for t in _lm_eval_init(stage.config)["tasks"]] == ["cmmlu", "gsm8k_cot_zeroshot", "humaneval"]
    # one config per command parses here; the SLURM test below parses every command of the scripts
    for stage in (stages[0], stages[4], stages[-1]):
        config = write_config(stage, planner.config_dir)
        with pytest.raises(SystemExit) as info:
            cli_main([*cli_args(stage, config), "--print_config"])
        assert info.value.code in (0, None), stage.name
        printed = yaml.safe_load(capsys.readouterr().out)
        assert printed["model"]["class_path"] == stage.config["model"]["class_path"]
        assert printed["trainer"]["precision"] == "bf16-mixed"


def _parse_slurm_commands(script: str) -> list[list[str]]:
    out = []
    for line in script.splitlines():
        match = re.match(r"\s*(?:srun )?python -m neuroflow (.*)$", line)
        if match:
            text = match.group(1).replace('"${DDP_ARGS[@]}"', "--trainer.accelerator cpu --trainer.devices 1 "
                                          "--trainer.num_nodes 1 --trainer.strategy ddp")
            out.append(shlex.split(text))
    return out


def test_slurm_scripts_render_and_every_command_parses(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    recipe = load_recipe(SLURM, overrides=[f"output_dir={tmp_path / 'run'}", f"slurm.workdir={REPO}"])
    written = render_slurm(recipe, plan_recipe(recipe), tmp_path / "slurm")
    for name in ("fit_array.sbatch", "merge_eval.sbatch", "submit.sh"):
        result = subprocess.run(["bash", "-n", str(written[name])], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    fit, merge = written["fit_array.sbatch"].read_text(), written["merge_eval.sbatch"].read_text()
    assert "#SBATCH --array=0-2" in fit and "#SBATCH --gpus-per-node=4" in fit and "#SBATCH --mem=320G" in fit
    assert "export HF_ALLOW_CODE_EVAL=1" in merge
    configs = re.search(r"CONFIGS=\((.*)\)", fit).group(1).split()
    commands = [["fit", "--config", c, "--trainer.accelerator", "cpu", "--trainer.devices", "1"] for c in configs]
    commands += _parse_slurm_commands(merge)
    assert len(commands) == 3 + 2 + len(MERGES) + 1  # fits; pretrained and individual; merges; report
    for args in commands:
        if args[0] == "run":
            run_main([*args[1:], "--dry-run"])
            continue
        with pytest.raises(SystemExit) as info:
            cli_main([*args, "--print_config"])
        assert info.value.code in (0, None), args
        capsys.readouterr()


def test_demo_recipe_plans(tmp_path: Path) -> None:
    recipe = load_recipe(DEMO, overrides=[f"output_dir={tmp_path}"])
    planner = plan_recipe(recipe)
    assert {t: s["kind"] for t, s in planner.specs.items()} == {
        "sst2": "multiple_choice", "trec": "multiple_choice", "agnews": "instruction"}
    assert planner.specs["trec"]["verbalizer"][0] == "description" and recipe.training.mode == "lora"
    assert [s.name for s in planner.merge_stages()] == [
        "merge_task_arithmetic", "merge_ties", "merge_dare", "merge_neuromerging"]


# ------------------------------------------------------------------------- the tiny twin
_TWIN_TASKS = {
    "cmmlu": """task: cmmlu
dataset_path: json
dataset_kwargs: {{data_files: {{dev: {dir}/cmmlu.dev.jsonl, test: {dir}/cmmlu.test.jsonl}}}}
test_split: test
fewshot_split: dev
output_type: multiple_choice
doc_to_text: "{{{{Question}}}}\\nA. {{{{A}}}}\\nB. {{{{B}}}}\\nC. {{{{C}}}}\\nD. {{{{D}}}}\\nAnswer:"
doc_to_choice: [A, B, C, D]
doc_to_target: "{{{{['A', 'B', 'C', 'D'].index(Answer)}}}}"
metric_list: [{{metric: acc}}, {{metric: acc_norm}}]
""",
    "gsm8k_cot_zeroshot": """task: gsm8k_cot_zeroshot
dataset_path: json
dataset_kwargs: {{data_files: {{test: {dir}/gsm8k.test.jsonl}}}}
test_split: test
output_type: generate_until
doc_to_text: "Q: {{{{question}}}}\\nA: Let's think step by step."
doc_to_target: "{{{{answer.split('#### ')[-1]}}}}"
generation_kwargs: {{until: ["Q:", "\\n\\n"], do_sample: false, max_gen_toks: 8}}
metric_list: [{{metric: exact_match}}]
filter_list:
  - {{name: strict-match, filter: [{{function: regex, regex_pattern: "The answer is (\\\\-?[0-9\\\\.\\\\,]+)."}}, {{function: take_first}}]}}
  - {{name: flexible-extract, filter: [{{function: regex, group_select: -1, regex_pattern: "(-?[0-9.,]+)"}}, {{function: take_first}}]}}
""",
    "humaneval": """task: humaneval
dataset_path: json
dataset_kwargs: {{data_files: {{test: {dir}/humaneval.test.jsonl}}}}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{canonical_solution}}}}"
generation_kwargs: {{until: ["\\ndef"], do_sample: false, max_gen_toks: 8}}
metric_list: [{{metric: exact_match}}]
filter_list: [{{name: create_test, filter: [{{function: take_first}}]}}]
""",
}


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return str(path)


def _twin_data(root: Path, shared_data_dir: str, n: int = 16) -> dict[str, Any]:
    """Local files with the hub datasets' columns (the experts' data), and the lm-eval task folder."""
    lines = (Path(shared_data_dir) / "sst2" / "stsa.binary.train").read_text().splitlines()
    sentences = [line[2:] for line in lines[: 4 * n]]
    rows = {
        "chinese": lambda i: {"instruction": "Repeat the first words.", "input": sentences[i],
                              "output": " ".join(sentences[i].split()[:3])},
        "math": lambda i: {"query": f"What is {i} plus {i + 3}?",
                           "response": f"{i} + {i + 3} = {2 * i + 3}. The answer is: {2 * i + 3}"},
        "code": lambda i: {"instruction": f"Write a function that adds {i}.", "input": "",
                           "output": f"def f(x):\n    return x + {i}"},
    }
    tasks = {}
    for task, make in rows.items():
        files = {split: _jsonl(root / f"{task}.{split}.jsonl", [make(k * n + i) for i in range(n)])
                 for k, split in enumerate(("train", "validation", "test"))}
        tasks[task] = {"source": {"path": "json", "data_files": files}, "max_new_tokens": 8,
                       "splits": {"train": "train", "validation": "validation", "test": "test"}}
    lm = root / "lm_eval_tasks"
    lm.mkdir()
    choice = [{"Question": s, "A": "yes", "B": "no", "C": "maybe", "D": "never", "Answer": "ABCD"[i % 4]}
              for i, s in enumerate(sentences[:13])]
    _jsonl(lm / "cmmlu.dev.jsonl", choice[:5])
    _jsonl(lm / "cmmlu.test.jsonl", choice[5:])
    _jsonl(lm / "gsm8k.test.jsonl", [{"question": f"What is {i} plus 2?", "answer": f"{i} + 2\n#### {i + 2}"}
                                    for i in range(6)])
    _jsonl(lm / "humaneval.test.jsonl", [{"prompt": f"def add_{i}(x):\n", "canonical_solution": f"    return x + {i}"}
                                        for i in range(4)])
    for name, text in _TWIN_TASKS.items():
        (lm / f"{name}.yaml").write_text(text.format(dir=lm))
    return {"tasks": tasks, "lm_eval_dir": str(lm)}


TWIN_RUN = {
    "caps": {"train": 16, "validation": 8, "test": 8},
    "training": {"data": {"batch_size": 8, "max_length": 96, "max_target_length": 32},
                 "trainer": {"precision": "32-true", "accelerator": "cpu", "devices": 1, "accumulate_grad_batches": 1,
                             "enable_progress_bar": False, "enable_model_summary": False}},
    "evaluation": {"data": {"eval_batch_size": 8, "max_length": 96, "max_target_length": 32},
                   "trainer": {"precision": "32-true", "accelerator": "cpu", "devices": 1,
                               "enable_progress_bar": False, "enable_model_summary": False}},
}


def _run_twin(tmp_path: Path, shared_data_dir: str, extra: list[str], override: dict[str, Any] | None = None,
              tasks: list[str] | None = None) -> tuple[dict[str, Any], Path]:
    pytest.importorskip("lm_eval")
    from neuroflow.testing import build_tiny_llama

    backbone = build_tiny_llama(tmp_path / "tiny_llama")
    data = _twin_data(tmp_path, shared_data_dir)
    layer = {**TWIN_RUN, "tasks": data["tasks"], **(override or {})}
    layer_path = tmp_path / "twin.yaml"
    layer_path.write_text(yaml.safe_dump(layer))
    lm = "evaluation.trainer.callbacks.0.init_args"
    out = tmp_path / "out"
    sets = [f"backbone={backbone}", f"output_dir={out}", f"{lm}.include_path={data['lm_eval_dir']}",
            f"{lm}.include_defaults=false", f"{lm}.tasks.2.metric=exact_match", *extra]
    recipe = load_recipe(PAPER, overrides=sets, override_files=[layer_path], tasks=tasks)
    combined = PipelineRunner(recipe, echo=lambda _: None, entry_point=cli_main).run()
    return combined, out


def _check_lm_eval_rows(report: dict[str, Any]) -> None:
    for row, metric in (("cmmlu", "acc"), ("gsm8k", "exact_match"), ("humaneval", "exact_match")):
        entry = report["tasks"][row]
        assert entry["primary_metric"] == metric and 0.0 <= entry["metrics"][metric] <= 1.0
    assert set(report["tasks"]["gsm8k"]["metrics"]) == {"exact_match", "exact_match_strict_match"}
    assert report["lm_eval"]["rows"] == ["cmmlu", "gsm8k", "humaneval"]


def test_paper_twin_one_merge_runs(tmp_path: Path, shared_data_dir: str) -> None:
    """Fits, the individual row (each lm-eval task scored by its expert) and NeuroMerging."""
    merges = [{"name": "neuromerging", "method": {"class_path": "neuroflow.merging.NeuroMerging"}}]
    combined, out = _run_twin(tmp_path, shared_data_dir, ["baselines.pretrained=false"], {"merges": merges})
    assert [r["name"] for r in combined["runs"]] == ["individual", "neuromerging"]
    assert list(combined["tasks"]) == ["chinese", "math", "code", "cmmlu", "gsm8k", "humaneval"]
    individual, merged = load_report(out / "eval" / "individual"), load_report(out / "merged" / "neuromerging")
    _check_lm_eval_rows(individual)
    _check_lm_eval_rows(merged)
    assert individual["tasks"]["cmmlu"]["expert_source"] == "evaluated"
    assert merged["tasks"]["cmmlu"]["expert"] == individual["tasks"]["cmmlu"]["metrics"]
    assert merged["tasks"]["math"]["primary_metric"] == "numeric_match"
    assert json.loads((out / "experts" / "math" / "expert.json").read_text())["mode"] == "lora"


@pytest.mark.slow
def test_paper_twin_every_row_runs(tmp_path: Path, shared_data_dir: str) -> None:
    """The whole recipe: pre-trained and individual rows and all six merges, each with lm-eval rows."""
    combined, out = _run_twin(tmp_path, shared_data_dir, [])
    assert [r["name"] for r in combined["runs"]] == ["pretrained", "individual", *MERGES]
    for name in MERGES:
        _check_lm_eval_rows(load_report(out / "merged" / name))
    assert (out / "report.md").is_file() and "humaneval" in (out / "summary.md").read_text()
