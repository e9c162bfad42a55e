"""Writing experts and reading them back without a Trainer (hand-modified weights)."""

import pytest
import torch
from safetensors.torch import load_file

from neuroflow.data import TaskSpec
from neuroflow.experts import fingerprint_state_dict, load_expert_head, load_manifest, load_task_vector, save_expert
from neuroflow.models import MultiTaskModule


def spec(name="a", kind="text_classification"):
    return TaskSpec(name=name, kind=kind, source={"path": "csv"}, label_names=["negative", "positive"],
                    text_column="text")


def finetune_by_hand(module: MultiTaskModule) -> dict[str, torch.Tensor]:
    base = {k: v.clone() for k, v in module.backbone_state_dict().items()}
    with torch.no_grad():
        for i, p in enumerate(module.backbone.parameters()):
            if p.requires_grad:
                p.add_(0.01 * (i + 1))
    return base


@pytest.mark.parametrize("save_format", ["task_vector", "weights"])
def test_full_expert_round_trip(save_format, tiny_bert, tmp_path):
    module = MultiTaskModule(tiny_bert, tasks=[spec()])
    base = finetune_by_hand(module)
    entry = save_expert(tmp_path, module, base, fingerprint_state_dict(base), save_format=save_format,
                        metrics={"val/a/accuracy": 0.5}, config={"model": {"x": 1}})
    assert (tmp_path / "a" / "expert.json").is_file() and (tmp_path / "manifest.json").is_file()
    assert load_manifest(tmp_path) == [entry]
    tv = load_task_vector(tmp_path, entry, base)
    expected = {k: (v.float() - base[k].float()) for k, v in module.backbone_state_dict().items()}
    assert set(tv) == set(expected)
    for key in tv:
        torch.testing.assert_close(tv[key], expected[key])
    head = load_expert_head(tmp_path, entry)
    assert torch.equal(head.linear.bias, module.heads["a"].linear.bias) and head.pooling == "cls"


def test_t5_task_vector_stores_tied_weights_once(tiny_t5, tmp_path):
    module = MultiTaskModule(tiny_t5, tasks=[spec(kind="text2text")])
    base = finetune_by_hand(module)
    entry = save_expert(tmp_path, module, base, fingerprint_state_dict(base))
    saved = load_file(str(tmp_path / entry["backbone"]["path"]))
    assert "shared.weight" in saved and "lm_head.weight" not in saved and "encoder.embed_tokens.weight" not in saved
    assert entry["head"] is None and load_expert_head(tmp_path, entry) is None


def test_rewriting_an_expert_replaces_it_whole(tiny_bert, tmp_path):
    module = MultiTaskModule(tiny_bert, tasks=[spec()])
    base = finetune_by_hand(module)
    save_expert(tmp_path, module, base, "sha256:x", save_format="weights")
    save_expert(tmp_path, module, base, "sha256:x", save_format="task_vector")
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == ["expert.json", "head.safetensors", "task_vector.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".manifest.lock", "a", "manifest.json"]


def test_mismatched_task_vector_keys_are_named(tiny_bert, tmp_path):
    module = MultiTaskModule(tiny_bert, tasks=[spec()])
    base = finetune_by_hand(module)
    entry = save_expert(tmp_path, module, base, fingerprint_state_dict(base))
    smaller = {k: v for k, v in base.items() if k != "pooler.dense.bias"}
    with pytest.raises(ValueError, match="unexpected \\['pooler.dense.bias'\\]"):
        load_task_vector(tmp_path, entry, smaller, base_fingerprint=entry["base_fingerprint"])


def test_missing_head_for_a_classification_task(tiny_bert, tmp_path):
    module = MultiTaskModule(tiny_bert, tasks=[spec()])
    entry = save_expert(tmp_path, module, None, "sha256:x", save_format="weights")
    with pytest.raises(ValueError, match="expert 'a' .* has no head for task 'b'"):
        load_expert_head(tmp_path, entry, task="b")


def test_a_killed_writers_temporary_is_removed_by_the_next_save(tiny_bert, tmp_path):
    import subprocess
    import sys

    # a real process that made a temporary and died: its pid is free again
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(proc.stdout)
    from neuroflow.atomic import _host_tag

    stale = tmp_path / f".a.tmp-{dead}-{_host_tag()}.deadbeef"
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "big.safetensors").write_bytes(b"x" * 1000)
    module = MultiTaskModule(tiny_bert, tasks=[spec()])
    base = finetune_by_hand(module)
    entry = save_expert(tmp_path, module, base, fingerprint_state_dict(base))
    assert not stale.exists()
    assert entry["base_model_ref"]["fingerprint"] == fingerprint_state_dict(base)
