"""merge_checkpoints gives exactly the in-memory merge, writes a loadable folder, shards and cards."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch
from safetensors import safe_open

from neuroflow.checkpoints import merge_checkpoints
from neuroflow.checkpoints.folder import CheckpointFolder
from neuroflow.experts.lora_delta import lora_adapter_deltas
from neuroflow.merging import DARE, TIES, DictExperts, NeuroMerging, TaskArithmetic, merge_state_dicts

from .conftest import folder_state

METHODS = [TaskArithmetic(scaling=0.4), TIES(mask_rate=0.7), NeuroMerging(mask_rate=0.7), DARE(drop_rate=0.5, seed=3, then="ties")]


def assert_same(out_dir, expected: dict[str, torch.Tensor]) -> None:
    got = folder_state(out_dir)
    assert sorted(got) == sorted(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), name


@pytest.mark.parametrize("method", METHODS, ids=repr)
def test_equals_the_in_memory_merge(llama, tmp_path, method) -> None:
    base = folder_state(llama["base"])
    experts = [folder_state(p) for p in llama["experts"]]
    expected = merge_state_dicts(base, experts, method)
    card = merge_checkpoints(str(llama["base"]), [str(p) for p in llama["experts"]], method, str(tmp_path / "out"))
    assert_same(tmp_path / "out", expected)
    assert card["merge"]["method"] == method.name and len(card["experts"]) == 3


def test_sharded_inputs_and_outputs(llama, tmp_path) -> None:
    method = TIES(mask_rate=0.5)
    expected = merge_state_dicts(folder_state(llama["base"]), [folder_state(p) for p in llama["experts"]], method)
    card = merge_checkpoints(str(llama["base_sharded"]), [str(p) for p in llama["sharded"]], method,
                             str(tmp_path / "out"), max_shard_size="40KB")
    out = tmp_path / "out"
    assert_same(out, expected)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert card["shards"] == len(files) > 2 and files == card["files"]
    assert all(f == f"model-{k + 1:05d}-of-{len(files):05d}.safetensors" for k, f in enumerate(files))
    total = 0
    for file in files:
        with safe_open(str(out / file), "pt") as handle:
            assert handle.metadata() == {"format": "pt"}
            sizes = [handle.get_tensor(n).numel() * handle.get_tensor(n).element_size() for n in handle.keys()]
            assert all(index["weight_map"][n] == file for n in handle.keys())
        total += sum(sizes)
        assert sum(sizes) <= 40_000 or len(sizes) == 1, file
    assert index["metadata"]["total_size"] == total


def test_output_loads_with_plain_transformers_and_has_a_card(llama, tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    command = "python -m neuroflow merge --model.base B --model.experts '[E1, E2]' --output_dir out"
    merge_checkpoints(str(llama["base"]), [str(p) for p in llama["experts"][:2]], NeuroMerging(), str(out),
                      dtype="bfloat16", command=command, config={"method": "NeuroMerging"})
    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert model.dtype == torch.bfloat16
    state = folder_state(out)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    logits = model(torch.tensor([[1, 2, 3]])).logits
    assert torch.isfinite(logits.float()).all()
    config = json.loads((out / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16" and config["dtype"] == "bfloat16"
    assert (out / "tokenizer.json").read_bytes() == (llama["base"] / "tokenizer.json").read_bytes()
    assert (out / "generation_config.json").is_file()
    readme = (out / "README.md").read_text()
    front = readme.split("---")[1]
    assert f"base_model: {llama['base']}" in front and "library_name: transformers" in front
    assert "- neuroflow" in front and "- merge" in front and "- neuromerging" in front
    assert command in readme and "mask_rate" in readme and "sha256:" in readme
    card = json.loads((out / "merge_card.json").read_text())
    assert card["dtype"] == "bfloat16" and card["command"] == command and card["neuroflow_version"]
    assert card["experts"][0]["fingerprint"].startswith("sha256:")


def test_files_honour_the_umask(llama, tmp_path) -> None:
    old = os.umask(0o022)
    try:
        merge_checkpoints(str(llama["base"]), [str(llama["experts"][0])], TaskArithmetic(), str(tmp_path / "out"))
    finally:
        os.umask(old)
    for file in (tmp_path / "out").iterdir():
        assert stat.S_IMODE(file.stat().st_mode) == 0o644, file.name


def test_adapter_and_full_finetune_together(llama, adapter, tmp_path) -> None:
    base = folder_state(llama["base"])
    deltas = lora_adapter_deltas(adapter, base)
    adapter_tv = {n: deltas.get(n, torch.zeros(t.shape)) for n, t in base.items()}
    full = folder_state(llama["experts"][0])
    full_tv = {n: full[n].float() - base[n].float() for n in base}
    method = TIES(mask_rate=0.6)
    expected = merge_state_dicts(base, DictExperts([full_tv, adapter_tv], task_vectors=True), method)
    card = merge_checkpoints(str(llama["base"]), [str(llama["experts"][0]), str(adapter)], method, str(tmp_path / "out"))
    assert_same(tmp_path / "out", expected)
    assert [e["kind"] for e in card["experts"]] == ["model", "adapter"]
    assert any(not torch.equal(expected[n], base[n]) for n in deltas)


def test_bert_encoder(bert, tmp_path) -> None:
    from transformers import AutoModel

    method = NeuroMerging(mask_rate=0.5)
    expected = merge_state_dicts(folder_state(bert["base"]), [folder_state(p) for p in bert["experts"]], method)
    merge_checkpoints(str(bert["base"]), [str(p) for p in bert["experts"]], method, str(tmp_path / "out"))
    assert_same(tmp_path / "out", expected)
    model = AutoModel.from_pretrained(str(tmp_path / "out"))
    assert model(torch.tensor([[1, 2]])).last_hidden_state.shape == (1, 2, 32)


def test_tied_embeddings_stay_tied(tmp_path) -> None:
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    from .conftest import perturbed, tiny_llama_config

    config = tiny_llama_config(tie_word_embeddings=True)
    base = LlamaForCausalLM(config)
    base.save_pretrained(str(tmp_path / "base"))
    perturbed(base, seed=5).save_pretrained(str(tmp_path / "e"))
    assert "lm_head.weight" not in folder_state(tmp_path / "base")
    merge_checkpoints(str(tmp_path / "base"), [str(tmp_path / "e")], TaskArithmetic(), str(tmp_path / "out"))
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"))
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert torch.equal(model.model.embed_tokens.weight, folder_state(tmp_path / "out")["model.embed_tokens.weight"])


def test_reader_modes_agree(llama) -> None:
    plain, mapped = CheckpointFolder(llama["sharded"][0]), CheckpointFolder(llama["sharded"][0], mmap=True)
    state = folder_state(llama["sharded"][0])
    assert sorted(plain) == sorted(state)
    for name in state:
        assert torch.equal(plain[name], state[name]) and torch.equal(mapped[name], state[name])
        assert plain.meta(name) == (tuple(state[name].shape), state[name].dtype)


def test_threads_and_prefetch_do_not_change_results(llama, tmp_path) -> None:
    method = NeuroMerging(mask_rate=0.6)
    merge_checkpoints(str(llama["base"]), [str(p) for p in llama["experts"]], method, str(tmp_path / "a"), threads=1)
    merge_checkpoints(str(llama["base"]), [str(p) for p in llama["experts"]], method, str(tmp_path / "b"), threads=2)
    a, b = folder_state(tmp_path / "a"), folder_state(tmp_path / "b")
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_gpt2_conv1d_weights_are_routed_by_their_modules(tmp_path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    from neuroflow.merging import routing_from_module

    from .conftest import perturbed

    config = GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2)
    base = GPT2LMHeadModel(config)
    base.save_pretrained(str(tmp_path / "base"))
    for i in range(2):
        expert = GPT2LMHeadModel(config)
        expert.load_state_dict(base.state_dict())
        perturbed(expert, seed=30 + i).save_pretrained(str(tmp_path / f"e{i}"))
    method = NeuroMerging(mask_rate=0.5)
    state = folder_state(tmp_path / "base")
    routing = routing_from_module(base)
    assert routing["transformer.h.0.attn.c_attn.weight"].axis == 1
    expected = merge_state_dicts(state, [folder_state(tmp_path / f"e{i}") for i in range(2)], method,
                                 routing={n: r for n, r in routing.items() if n in state})
    merge_checkpoints(str(tmp_path / "base"), [str(tmp_path / f"e{i}") for i in range(2)], method, str(tmp_path / "out"))
    assert_same(tmp_path / "out", expected)


def test_a_failing_write_leaves_no_output(llama, tmp_path, monkeypatch) -> None:
    """The shard writer runs on its own thread; its error still reaches the caller, names the
    problem, and leaves neither OUT nor a temporary folder."""
    from neuroflow.checkpoints import shard_writer

    real, calls = shard_writer.ShardWriter.write, []

    def failing(self, name, tensor, *where):
        calls.append(name)
        if len(calls) == 3:
            raise OSError(f"No space left on device writing {name!r}")
        return real(self, name, tensor, *where)

    monkeypatch.setattr(shard_writer.ShardWriter, "write", failing)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="No space left on device writing"):
        merge_checkpoints(str(llama["base"]), [str(p) for p in llama["experts"]], TIES(mask_rate=0.5), str(out))
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_card_records_the_time_of_each_phase(llama, tmp_path) -> None:
    card = merge_checkpoints(str(llama["base"]), [str(p) for p in llama["experts"]], TIES(mask_rate=0.7),
                             str(tmp_path / "out"), threads=1)
    saved = json.loads((tmp_path / "out" / "merge_card.json").read_text())
    assert saved["timings"] == card["timings"] and saved["threads"] == 1
    assert list(card["timings"]) == ["checks", "statistics", "merge_and_write"]
    for phase, seconds in card["timings"].items():
        assert set(seconds) == {"wall_s", "cpu_s"}, phase
        assert 0 <= seconds["wall_s"] < 60 and 0 <= seconds["cpu_s"] < 120, phase
    # Reading and merging every tensor is not free: a phase that recorded nothing would be a bug.
    assert card["timings"]["merge_and_write"]["wall_s"] > 0
