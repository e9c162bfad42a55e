"""Bad inputs are refused before any tensor is read, naming file and tensor, leaving no output."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from neuroflow.checkpoints import CheckpointError, merge_checkpoints
from neuroflow.merging import TIES, MergeInputError, TaskArithmetic, merge_state_dicts

from .conftest import folder_state, write_tokenizer


def refused(base, experts, out: Path, match: str, **kwargs) -> CheckpointError:
    with pytest.raises(CheckpointError, match=match) as info:
        merge_checkpoints(str(base), [str(e) for e in experts], TIES(), str(out), **kwargs)
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.tmp-")]
    return info.value


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_shape_mismatch_names_tensor_expert_and_shapes(llama, tmp_path) -> None:
    bad = copy(llama["experts"][0], tmp_path / "bad")
    state = folder_state(bad)
    state["model.layers.1.mlp.up_proj.weight"] = torch.zeros(60, 32)
    save_file(state, str(bad / "model.safetensors"), metadata={"format": "pt"})
    start = time.perf_counter()
    err = refused(llama["base"], [llama["experts"][1], bad], tmp_path / "out", match="model.layers.1.mlp.up_proj.weight")
    assert time.perf_counter() - start < 5
    assert str(bad) in str(err) and "(60, 32)" in str(err) and "(64, 32)" in str(err)


def test_missing_shard(llama, tmp_path) -> None:
    bad = copy(llama["sharded"][0], tmp_path / "bad")
    victim = sorted(bad.glob("model-*.safetensors"))[1]
    victim.unlink()
    refused(llama["base"], [bad], tmp_path / "out", match=f"{victim}.*missing")


def test_corrupt_header(llama, tmp_path) -> None:
    bad = copy(llama["experts"][0], tmp_path / "bad")
    raw = bytearray((bad / "model.safetensors").read_bytes())
    raw[8:20] = b"not json!!!!"
    (bad / "model.safetensors").write_bytes(bytes(raw))
    refused(llama["base"], [bad], tmp_path / "out", match=f"{bad / 'model.safetensors'}: corrupt safetensors header")
    (bad / "model.safetensors").write_bytes(b"\xff" * 8 + b"{}")
    refused(llama["base"], [bad], tmp_path / "out", match="corrupt safetensors header")


def test_other_architecture(llama, bert, tmp_path) -> None:
    err = refused(llama["base"], [bert["experts"][0]], tmp_path / "out", match="different architecture")
    assert "model_type" in str(err) and "bert" in str(err)


def test_bin_that_needs_arbitrary_unpickling(llama, tmp_path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(llama["experts"][0] / "config.json", bad / "config.json")

    import argparse

    state = dict(folder_state(llama["experts"][0]))
    torch.save({**state, "evil": argparse.Namespace(x=1)}, bad / "pytorch_model.bin")
    refused(llama["base"], [bad], tmp_path / "out", match=f"{bad / 'pytorch_model.bin'}: refused: .*unpickling")


def test_plain_bin_is_read(llama, tmp_path) -> None:
    folder = tmp_path / "bin"
    folder.mkdir()
    shutil.copy(llama["experts"][0] / "config.json", folder / "config.json")
    state = folder_state(llama["experts"][0])
    torch.save(state, folder / "pytorch_model.bin")
    method = TaskArithmetic()
    merge_checkpoints(str(llama["base"]), [str(folder)], method, str(tmp_path / "out"))
    expected = merge_state_dicts(folder_state(llama["base"]), [state], method)
    got = folder_state(tmp_path / "out")
    assert all(torch.equal(got[n], expected[n]) for n in expected)


def test_missing_tensor_and_extra_tensor(llama, tmp_path) -> None:
    bad = copy(llama["experts"][0], tmp_path / "bad")
    state = folder_state(bad)
    del state["model.norm.weight"]
    save_file(state, str(bad / "model.safetensors"))
    refused(llama["base"], [bad], tmp_path / "out", match="'model.norm.weight' of the base is missing")
    state = {**folder_state(llama["experts"][0]), "classifier.weight": torch.zeros(2, 32)}
    save_file(state, str(bad / "model.safetensors"))
    refused(llama["base"], [bad], tmp_path / "out", match="'classifier.weight' that the base does not have")


def test_nonexistent_reference(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="no such folder"):
        merge_checkpoints(str(tmp_path / "nope"), [str(tmp_path / "nope2")], TIES(), str(tmp_path / "out"))


def test_nan_merge_is_refused_before_anything_is_written(llama, tmp_path) -> None:
    out = tmp_path / "out"
    bad = copy(llama["experts"][0], tmp_path / "bad")
    state = folder_state(bad)
    state["model.norm.weight"] = torch.full_like(state["model.norm.weight"], 3e38)
    save_file(state, str(bad / "model.safetensors"))
    with pytest.raises(MergeInputError, match=r"TaskArithmetic.*Inf.*'model.norm.weight'"):
        merge_checkpoints(str(llama["base"]), [str(bad), str(bad)], TaskArithmetic(scaling=1.0), str(out), dtype="float16")
    assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))


def resized(llama, tmp_path: Path, name: str, rows: int) -> Path:
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(str(llama["experts"][0]))
    model.resize_token_embeddings(rows)
    model.save_pretrained(str(tmp_path / name))
    write_tokenizer(tmp_path / name, rows, extra="x")
    return tmp_path / name


def test_resized_vocabulary_refused_then_shared_rows(llama, tmp_path) -> None:
    grown = resized(llama, tmp_path, "grown", 136)
    err = refused(llama["base"], [llama["experts"][1], grown], tmp_path / "out", match="vocabulary was resized")
    assert "136 rows" in str(err) and "shared_rows" in str(err)

    method = TIES(mask_rate=0.5)
    card = merge_checkpoints(str(llama["base"]), [str(llama["experts"][1]), str(grown)], method, str(tmp_path / "out"),
                             vocab="shared_rows")
    base, one, two = folder_state(llama["base"]), folder_state(llama["experts"][1]), folder_state(grown)
    cut = {n: (t[:128] if t.shape[0] == 136 else t) for n, t in two.items()}
    expected = merge_state_dicts(base, [one, cut], method)
    got = folder_state(tmp_path / "out")
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert got[name].shape[0] == 136
        assert torch.equal(got[name][:128], expected[name]) and torch.equal(got[name][128:], two[name][128:])
    assert torch.equal(got["model.norm.weight"], expected["model.norm.weight"])
    assert card["vocab"]["output_rows"] == 136 and card["vocab"]["extra_rows_from"] == str(grown)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["vocab_size"] == 136
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == (grown / "tokenizer.json").read_bytes()
    assert any("tokenizer differs" in w for w in card["warnings"])
    assert "shared_rows" in (tmp_path / "out" / "README.md").read_text()

    other = resized(llama, tmp_path, "other", 140)
    refused(llama["base"], [grown, other], tmp_path / "out2", match="several experts added tokens", vocab="shared_rows")


def test_differing_tokenizer_is_reported(llama, tmp_path) -> None:
    expert = copy(llama["experts"][0], tmp_path / "e")
    write_tokenizer(expert, extra="y")
    card = merge_checkpoints(str(llama["base"]), [str(expert)], TaskArithmetic(), str(tmp_path / "out"))
    assert card["warnings"] == [f"{expert}: tokenizer differs from the base's (tokenizer.json)"]
