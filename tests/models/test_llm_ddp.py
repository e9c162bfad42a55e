"""Two CPU processes (DDP, gloo) score instruction, multiple-choice and generation tasks exactly as
one process does: unpadded evaluation shards of uneven size, metric sums reduced once."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from causal_helpers import arithmetic, sst2_choice, trec_instruction, write_arithmetic

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def run_script(*args: str) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(HERE / "causal_script.py"), *args], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


def fine_tuned(model: str, data_dir: str, arith: Path, folder: Path, make_trainer) -> str:
    """The tiny LLaMA after a short fit on the three tasks, saved: its answers are not all wrong."""
    from functools import partial

    from lightning.pytorch import seed_everything
    from transformers import AutoTokenizer

    from neuroflow.data import MultiTaskDataModule
    from neuroflow.models import AdamW, MultiTaskModule

    seed_everything(0)
    dm = MultiTaskDataModule([sst2_choice(), trec_instruction(), arithmetic(arith)], data_dir=data_dir, tokenizer=model,
                             max_length=48, max_target_length=16, batch_size=8, max_train_examples=48,
                             max_eval_examples=21, cache_dir=str(folder / "cache"))
    module = MultiTaskModule(model, tasks=dm.task_specs, optimizer=partial(AdamW, lr=3e-3), lr_scheduler=None)
    make_trainer(max_epochs=15, limit_val_batches=0).fit(module, dm)
    module.hf_model.save_pretrained(folder / "tuned")
    AutoTokenizer.from_pretrained(model).save_pretrained(folder / "tuned")
    return str(folder / "tuned")


@pytest.mark.slow
def test_two_processes_score_all_three_kinds_exactly_like_one(tiny_llama, shared_data_dir, make_trainer, tmp_path):
    # 60% train / 20% validation / 20% test: 21 validation rows; two totals, so some answers are right.
    arith = write_arithmetic(tmp_path, n=105, totals=(50, 80))
    model = fine_tuned(tiny_llama, shared_data_dir, arith, tmp_path, make_trainer)
    reports = {}
    for devices in (1, 2):
        out = tmp_path / f"metrics_{devices}.json"
        run_script("validate", model, shared_data_dir, str(arith), str(tmp_path / "cache"), str(out), str(devices))
        reports[devices] = json.loads(out.read_text())
    assert (reports[1]["world"], reports[2]["world"]) == (1, 2)
    one, two = reports[1]["metrics"], reports[2]["metrics"]
    assert one == two  # bit for bit
    for key in ("val/sst2_choice/acc", "val/sst2_choice/acc_norm", "val/trec_instr/exact_match",
                "val/arith/numeric_match", "val/arith/exact_match"):
        assert key in one
    # Scores strictly between 0 and 1: an example counted twice or dropped would change them.
    for key in ("val/sst2_choice/acc", "val/trec_instr/exact_match", "val/arith/numeric_match"):
        assert 0.0 < one[key] < 1.0, key
    print(json.dumps(one, indent=1))
    assert reports[1]["truncated"] == reports[2]["truncated"]
