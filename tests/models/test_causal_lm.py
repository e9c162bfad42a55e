"""The `causal_lm` family: detection, LoRA targets per architecture, the masked loss, gradient
checkpointing, plain state dict names, and the construction-time refusals."""

import pytest
import torch
from safetensors.torch import load_file
from torch.nn import functional as F
from transformers import AutoTokenizer, BertConfig, GPT2Config, LlamaConfig, T5Config

from neuroflow.data import TaskSpec
from neuroflow.data.collate import TaskCollator
from neuroflow.data.llm_encoding import encode_llm_batch
from neuroflow.models import MultiTaskModule
from neuroflow.models.backbone import resolve_family

from causal_helpers import CAUSAL_ARCHS

PROJECTIONS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def choice_spec(name: str = "mc", **kw) -> TaskSpec:
    return TaskSpec(name=name, kind="multiple_choice", source={"path": "csv"}, label_names=["no", "yes"],
                    prompt_template="Question: {text}\nAnswer:", **kw)


def instruction_batch(model_path: str, prompts: list[str], targets: list[str]) -> dict:
    tok = AutoTokenizer.from_pretrained(model_path)
    spec = TaskSpec(name="ins", kind="instruction", source={"path": "csv"}, prompt_template="{q}",
                    target_column="a")
    cols = encode_llm_batch({"prompt": prompts, "target": targets, "label": [0] * len(prompts)}, spec, tok, 64, 16,
                            training=True)
    return TaskCollator("ins", "instruction", tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)(cols)


def test_auto_family_detects_decoders():
    assert resolve_family(LlamaConfig(), "auto") == "causal_lm"
    assert resolve_family(GPT2Config(), "auto") == "causal_lm"
    assert resolve_family(BertConfig(), "auto") == "encoder"
    assert resolve_family(BertConfig(architectures=["BertLMHeadModel"], is_decoder=True), "auto") == "causal_lm"
    assert resolve_family(GPT2Config(), "encoder") == "encoder"  # explicit encoder use stays possible
    with pytest.raises(ValueError, match="family 'causal_lm' needs a decoder-only"):
        resolve_family(T5Config(), "causal_lm")


@pytest.mark.parametrize("arch", CAUSAL_ARCHS)
def test_state_dict_names_are_save_pretrained_names_full_and_lora(arch, causal_models):
    path = causal_models[arch]
    saved = load_file(f"{path}/model.safetensors")
    for lora in (None, {"r": 2}):
        module = MultiTaskModule(path, tasks=[choice_spec()], lora=lora)
        state = module.backbone_state_dict()
        assert module.family == "causal_lm" and len(module.heads) == 0
        assert set(state) == set(saved)  # tied LM heads (Qwen2, GPT-2) dropped as save_pretrained does
        for key, value in saved.items():
            assert torch.equal(state[key], value)
        full = module.state_dict()  # the keys a gathered (FSDP) state dict has
        assert all(torch.equal(full[k], state[p]) for p, k in module.backbone_state_keys().items())


@pytest.mark.parametrize("arch", CAUSAL_ARCHS)
def test_lora_targets_per_architecture(arch, causal_models):
    module = MultiTaskModule(causal_models[arch], tasks=[choice_spec()], lora={"r": 2, "lora_alpha": 4})
    config = module.backbone.peft_config["default"]
    if arch == "gpt2":
        assert set(config.target_modules) == {"c_attn", "c_proj", "c_fc"} and config.fan_in_fan_out
    else:
        assert set(config.target_modules) == PROJECTIONS and not config.fan_in_fan_out
    assert config.task_type == "CAUSAL_LM"
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)


def test_lora_targets_are_overridable(tiny_llama, tiny_gpt2):
    module = MultiTaskModule(tiny_llama, tasks=[choice_spec()], lora={"r": 2, "target_modules": ["q_proj", "v_proj"]})
    assert set(module.backbone.peft_config["default"].target_modules) == {"q_proj", "v_proj"}
    gpt2 = MultiTaskModule(tiny_gpt2, tasks=[choice_spec()], lora={"r": 2, "target_modules": ["c_attn"]})
    assert gpt2.backbone.peft_config["default"].fan_in_fan_out  # set for the Conv1D target
    with pytest.raises(ValueError, match=r"target_modules \['query'\] not found"):
        MultiTaskModule(tiny_llama, tasks=[choice_spec()], lora={"r": 2, "target_modules": ["query"]})


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_loss_is_cross_entropy_on_target_tokens_only(arch, causal_models):
    path = causal_models[arch]
    module = MultiTaskModule(path, tasks=[choice_spec()]).eval()
    batch = instruction_batch(path, ["Review: a fine film\nSentiment:", "Q: who?\nA:"], ["positive", "a long answer"])
    batch["task"] = "mc"
    loss = module.loss(batch)
    # By hand: every row alone, log-softmax at the positions before each target token.
    tok = AutoTokenizer.from_pretrained(path)
    nll, count = 0.0, 0
    for ids, labels in zip(batch["input_ids"], batch["labels"]):
        real = int((labels != -100).nonzero().max()) + 1
        logits = module.hf_model(input_ids=ids[None, :real]).logits[0].float()
        for pos in range(1, real):
            if labels[pos] != -100:
                nll -= float(F.log_softmax(logits[pos - 1], -1)[labels[pos]])
                count += 1
    prompt_len = len(tok("Review: a fine film\nSentiment:")["input_ids"])
    assert (batch["labels"][0, :prompt_len] == -100).all() and batch["labels"][0, prompt_len] != -100
    assert count == int((batch["labels"] != -100).sum())
    torch.testing.assert_close(float(loss), nll / count, rtol=1e-5, atol=1e-5)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny_llama):
    batch = {**instruction_batch(tiny_llama, ["Question: what?\nAnswer:"], ["this one"]), "task": "mc"}
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        module = MultiTaskModule(tiny_llama, tasks=[choice_spec()], lora={"r": 2}, gradient_checkpointing=checkpointing)
        for n, p in module.named_parameters():  # make lora_B non-zero so gradients flow everywhere
            if "lora_B" in n:
                p.data.normal_()
        module.train()
        module.loss(batch).backward()
        grads.append({n: p.grad.clone() for n, p in module.named_parameters() if p.requires_grad})
    assert module.hf_model.is_activation_checkpointing and not module.hf_model.config.use_cache
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name])


def test_llm_task_on_an_encoder_and_classification_on_a_decoder_are_refused(tiny_bert, tiny_llama):
    with pytest.raises(ValueError, match=r"task 'mc' is multiple_choice, which needs model family 'causal_lm'.*"
                                         r"`kind`.*decoder-only"):
        MultiTaskModule(tiny_bert, tasks=[choice_spec()])
    classify = TaskSpec(name="cls", source={"path": "csv"}, label_names=["a", "b"], text_column="text")
    with pytest.raises(ValueError, match=r"task 'cls' is text_classification.*kind: multiple_choice"):
        MultiTaskModule(tiny_llama, tasks=[classify])


def test_tokenizer_ids_beyond_the_embeddings_are_refused(tiny_llama, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    tok.add_special_tokens({"pad_token": "<pad>"})  # id 1000: the model has 1000 rows
    tok.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"special token ids \{'pad': 1000\} beyond the model's 1000"):
        MultiTaskModule(tiny_llama, tasks=[choice_spec()], text2text_tokenizer=str(tmp_path))
