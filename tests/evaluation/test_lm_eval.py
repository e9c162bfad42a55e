"""lm-evaluation-harness tasks on an in-memory model: scores equal a hand computation, rows join the report.

Offline: a custom lm-eval task YAML (SST-2 as multiple choice) over a JSON-lines file of real test
rows, and a tiny LLaMA whose weights are re-drawn with a large scale so that its choices depend on
the input (an untrained tiny model picks the same word for every row, which would prove nothing).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")

from lightning.pytorch import LightningModule  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from neuroflow.evaluation import LmEvalCallback  # noqa: E402
from neuroflow.evaluation.lm_eval_tasks import (  # noqa: E402
    LmEvalTask,
    as_lm_eval_tasks,
    extend_report,
    make_task_manager,
    metrics_of,
    run_lm_eval,
)
from neuroflow.evaluation.report import build_report, load_report, write_report  # noqa: E402
from neuroflow.testing import build_tiny_llama  # noqa: E402

CHOICES = ["bad", "wonderful"]  # different lengths: acc_norm (per character) can differ from acc
PROMPT = "Review: {text}\nSentiment:"


@pytest.fixture(scope="module")
def rows(shared_data_dir: str) -> list[dict]:
    lines = (Path(shared_data_dir) / "sst2" / "stsa.binary.test").read_text().splitlines()
    return [{"text": line[2:], "label": int(line[0])} for line in lines[::150][:12]]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = build_tiny_llama(tmp_path_factory.mktemp("llama"))
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.3, generator=gen)
    model.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory: pytest.TempPathFactory, rows: list[dict]) -> str:
    root = tmp_path_factory.mktemp("lm_eval_tasks")
    (root / "sst2.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "sst2_local.yaml").write_text(
        "task: sst2_local\n"
        "dataset_path: json\n"
        f"dataset_kwargs: {{data_files: {{test: {root / 'sst2.jsonl'}}}}}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "Review: {{text}}\\nSentiment:"\n'  # the YAML escape \n: the prompt's newline
        f"doc_to_choice: {json.dumps(CHOICES)}\n"
        "doc_to_target: label\n"
        "metric_list: [{metric: acc}, {metric: acc_norm}]\n")
    return str(root)


def _load(path: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def _hand_scores(path: str, rows: list[dict]) -> tuple[float, float, float]:
    """(acc, acc_norm, smallest log-likelihood gap): the continuation ' <choice>' scored after the
    prompt, token by token, as lm-eval documents it (the tokenizer's own special tokens)."""
    model, tok = _load(path)
    right = right_norm = 0
    gaps, predictions = [], set()
    for row in rows:
        context = PROMPT.format(text=row["text"])
        lls = []
        for choice in CHOICES:
            whole, n = tok(context + " " + choice)["input_ids"], len(tok(context)["input_ids"])
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].double(), -1)
            lls.append(sum(logp[i - 1, whole[i]].item() for i in range(n, len(whole))))
        pred = max(range(len(CHOICES)), key=lambda i: lls[i])
        right += pred == row["label"]
        right_norm += max(range(len(CHOICES)), key=lambda i: lls[i] / len(CHOICES[i])) == row["label"]
        gaps.append(abs(lls[0] - lls[1]))
        predictions.add(pred)
    assert predictions == {0, 1}, "the tiny model must choose differently across rows for the test to mean anything"
    return right / len(rows), right_norm / len(rows), min(gaps)


def test_accuracy_equals_hand_loglikelihood(tiny_model: str, task_dir: str, rows: list[dict]) -> None:
    acc, acc_norm, gap = _hand_scores(tiny_model, rows)
    assert gap > 1e-4  # no near-tie that float rounding in batched scoring could flip
    model, tok = _load(tiny_model)
    scores = run_lm_eval(model, tok, ["sst2_local"], num_fewshot=0, include_path=task_dir,
                         include_defaults=False, batch_size=5)
    metrics, primary = scores["sst2_local"]
    assert primary == "acc"
    assert metrics["acc"] == pytest.approx(acc) and metrics["acc_norm"] == pytest.approx(acc_norm)


def test_metrics_of_filters_groups_and_primary() -> None:
    results = {"results": {"gsm8k": {"alias": "gsm8k", "exact_match,strict-match": 0.25,
                                     "exact_match_stderr,strict-match": "N/A",
                                     "exact_match,flexible-extract": 0.5}},
               "groups": {"cmmlu": {"acc,none": 0.4, "acc_stderr,none": 0.01, "acc_norm,none": 0.41}}}
    assert metrics_of(results, LmEvalTask("gsm8k")) == (
        {"exact_match": 0.25, "exact_match_flexible_extract": 0.5}, "exact_match")
    assert metrics_of(results, LmEvalTask("gsm8k", filter="flexible-extract")) == (
        {"exact_match": 0.5, "exact_match_strict_match": 0.25}, "exact_match")
    assert metrics_of(results, LmEvalTask("cmmlu", metric="acc_norm")) == ({"acc": 0.4, "acc_norm": 0.41}, "acc_norm")
    with pytest.raises(KeyError, match="filter 'none'"):
        metrics_of(results, LmEvalTask("gsm8k", filter="none"))
    with pytest.raises(KeyError, match="metric 'pass@1'"):
        metrics_of(results, LmEvalTask("cmmlu", metric="pass@1"))
    with pytest.raises(KeyError, match="no results for task 'mbpp'"):
        metrics_of(results, LmEvalTask("mbpp"))


def test_task_entries_are_checked(task_dir: str) -> None:
    assert [t.row_name for t in as_lm_eval_tasks(["a", {"name": "b", "row": "c", "expert": "math"}])] == ["a", "c"]
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['shots'\]"):
        as_lm_eval_tasks([{"name": "gsm8k", "shots": 5}])
    with pytest.raises(ValueError, match="each row once"):
        as_lm_eval_tasks(["gsm8k", {"name": "gsm8k_cot", "row": "gsm8k"}])
    with pytest.raises(ValueError, match="at least one task"):
        as_lm_eval_tasks([])
    with pytest.raises(ValueError, match=r"'sst2_locl' is unknown to lm-eval.*close: \['sst2_local'\]"):
        make_task_manager([LmEvalTask("sst2_locl")], task_dir, include_defaults=False)
    with pytest.raises(FileNotFoundError, match="include_path"):
        LmEvalCallback(tasks=["sst2_local"], include_path=str(Path(task_dir) / "missing"))


def test_extend_report_adds_rows_and_recomputes_averages() -> None:
    report = build_report("ties", {"trec": {"acc": 0.5}}, {"trec": "acc"}, {"trec": {"acc": 1.0}},
                          {"trec": "manifest"}, extra={"run": {"world_size": 1}, "search": {"best": 1}})
    scores = {"gsm8k": ({"exact_match": 0.2}, "exact_match")}
    out = extend_report(report, scores, {"gsm8k": {"exact_match": 0.4}}, {"gsm8k": "evaluated"}, {"rows": ["gsm8k"]})
    assert list(out["tasks"]) == ["trec", "gsm8k"]
    assert out["tasks"]["gsm8k"]["normalized"] == pytest.approx(0.5)
    assert out["average"]["score"] == pytest.approx(0.35) and out["average"]["normalized"] == pytest.approx(0.5)
    assert out["run"] == {"world_size": 1} and out["search"] == {"best": 1} and out["lm_eval"] == {"rows": ["gsm8k"]}
    assert out["tasks"]["trec"] == report["tasks"]["trec"]
    with pytest.raises(ValueError, match=r"clash with Trainer-scored tasks"):
        extend_report(report, {"trec": ({"acc": 1.0}, "acc")}, {}, {}, {})


class _Scored(LightningModule):
    """The smallest evaluation module: a Hugging Face model, a task, and a report built on test."""

    report_kind = "merged"

    def __init__(self, backbone: str, report_dir: str) -> None:
        super().__init__()
        from transformers import AutoModelForCausalLM

        self.save_hyperparameters()  # the callback finds the tokenizer at hparams.backbone
        self.hf_model = AutoModelForCausalLM.from_pretrained(backbone)
        self.task_names = ["trec"]

    def test_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        pass

    def test_dataloader(self) -> DataLoader:
        return DataLoader(torch.zeros(2, 1))

    def build_stage_report(self, stage: str = "test", reference=None, extra=None) -> dict:
        return build_report("merged", {"trec": {"accuracy": 0.5}}, {"trec": "accuracy"}, split=stage)

    def on_test_end(self) -> None:
        write_report(self.build_stage_report("test"), self.hparams.report_dir)


def test_callback_rows_join_the_report_normalized_by_the_experts(
        tiny_model: str, task_dir: str, rows: list[dict], tmp_path: Path) -> None:
    from neuroflow.commands.trainer import NeuroTrainer

    experts_dir = tmp_path / "individual"
    write_report(build_report("experts", {"sst2": {"acc": 0.5, "acc_norm": 0.5}}, {"sst2": "acc"}), experts_dir)
    callback = LmEvalCallback(tasks=[{"name": "sst2_local", "row": "sst2"}], num_fewshot=0, include_path=task_dir,
                              include_defaults=False, batch_size=4, reference=str(experts_dir))
    trainer = NeuroTrainer(accelerator="cpu", devices=1, logger=False, callbacks=[callback],
                           enable_progress_bar=False, enable_model_summary=False)
    trainer.test(_Scored(tiny_model, str(tmp_path / "merged")), verbose=False)
    report = load_report(tmp_path / "merged")
    acc = _hand_scores(tiny_model, rows)[0]
    assert list(report["tasks"]) == ["trec", "sst2"]
    assert report["tasks"]["sst2"]["metrics"]["acc"] == pytest.approx(acc)
    assert report["tasks"]["sst2"]["normalized"] == pytest.approx(acc / 0.5)
    assert report["tasks"]["sst2"]["expert_source"] == f"report:{experts_dir}"
    assert report["average"]["score"] == pytest.approx((0.5 + acc) / 2)
    assert report["lm_eval"]["rows"] == ["sst2"] and "| sst2 | acc *" in (tmp_path / "merged" / "report.md").read_text()


_DDP_SCRIPT = """
import json, os, sys, torch, torch.distributed as dist, torch.multiprocessing as mp

def work(rank, world, model, tasks, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[4])
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from neuroflow.evaluation.lm_eval_tasks import run_lm_eval
    scores = run_lm_eval(AutoModelForCausalLM.from_pretrained(model).eval(), AutoTokenizer.from_pretrained(model),
                         ["sst2_local"], num_fewshot=0, include_path=tasks, include_defaults=False, batch_size=4)
    if rank == 0:
        json.dump(scores, open(out, "w"))
    dist.destroy_process_group()

if __name__ == "__main__":
    mp.spawn(work, args=(2, sys.argv[1], sys.argv[2], sys.argv[3]), nprocs=2)
"""


@pytest.mark.slow
def test_two_processes_give_the_numbers_of_one(tiny_model: str, task_dir: str, tmp_path: Path) -> None:
    """12 rows over 2 gloo ranks: each scores its shard, lm-eval gathers on rank 0 (~60 s)."""
    import socket

    script, out = tmp_path / "ddp.py", tmp_path / "scores.json"
    script.write_text(_DDP_SCRIPT)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    subprocess.run([sys.executable, str(script), tiny_model, task_dir, str(out), port], check=True, timeout=600)
    model, tok = _load(tiny_model)
    single = run_lm_eval(model, tok, ["sst2_local"], num_fewshot=0, include_path=task_dir, include_defaults=False)
    assert json.loads(out.read_text()) == {k: [m, p] for k, (m, p) in single.items()}
