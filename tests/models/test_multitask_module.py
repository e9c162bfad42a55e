"""`MultiTaskModule` without a Trainer: construction checks, heads, state dicts, text2text decoding."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from neuroflow.data import TaskSpec
from neuroflow.models import MultiTaskModule


def spec(name: str = "a", kind: str = "text_classification", labels=("neg", "pos"), **kw) -> TaskSpec:
    extra = {"image_column": "image"} if kind == "image_classification" else {"text_column": "text"}
    return TaskSpec(name=name, kind=kind, source={"path": "csv"}, label_names=list(labels), **extra, **kw)


def text_batch(tokenizer_path: str, task: str, labels: list[int]) -> dict:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_path)
    enc = tok(["what is the name of the city", "a funny movie"][: len(labels)], padding=True, return_tensors="pt")
    return {**enc, "labels": torch.tensor(labels), "task": task}


def test_heads_per_task_and_logits(tiny_bert):
    module = MultiTaskModule(tiny_bert, tasks=[spec("a"), spec("b", labels=("x", "y", "z"))])
    assert list(module.heads) == ["a", "b"] and module.family == "encoder"
    assert module(text_batch(tiny_bert, "b", [0, 2])).shape == (2, 3)
    loss, preds, targets = module.evaluate_batch(text_batch(tiny_bert, "a", [0, 1]))
    assert loss.ndim == 0 and preds.shape == (2,) and targets.tolist() == [0, 1]


def test_backbone_state_dict_uses_save_pretrained_names(tiny_bert, tiny_t5):
    for path in (tiny_bert, tiny_t5):
        module = MultiTaskModule(path, tasks=[spec()])
        saved = load_file(str(Path(path) / "model.safetensors"))
        assert set(module.backbone_state_dict()) == set(saved)  # T5's tied aliases dropped
        for key, value in saved.items():
            assert torch.equal(module.backbone_state_dict()[key], value)


def test_lora_state_dict_is_plain_and_load_reaches_base_layers(tiny_bert):
    full = MultiTaskModule(tiny_bert, tasks=[spec()])
    lora = MultiTaskModule(tiny_bert, tasks=[spec()], lora={"r": 2, "target_modules": ["query", "value"]})
    plain = lora.backbone_state_dict()
    assert set(plain) == set(full.backbone_state_dict())
    shifted = {k: v + 1.0 for k, v in plain.items()}
    lora.load_backbone_state_dict(shifted)
    key = "encoder.layer.0.attention.self.query.weight"
    assert torch.equal(lora.backbone_state_dict()[key], full.backbone_state_dict()[key] + 1.0)
    trainable = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert all("lora_" in n or n.startswith("heads.") for n in trainable)
    assert any(n.startswith("heads.") for n in trainable)


def test_load_backbone_state_dict_names_bad_keys(tiny_bert):
    module = MultiTaskModule(tiny_bert, tasks=[spec()])
    state = module.backbone_state_dict()
    with pytest.raises(ValueError, match="not in the backbone: \\['bogus.weight'\\]"):
        module.load_backbone_state_dict({**state, "bogus.weight": torch.zeros(1)})
    key = "pooler.dense.bias"
    with pytest.raises(ValueError, match=f"{key} has shape"):
        module.load_backbone_state_dict({**state, key: torch.zeros(3)})
    missing = dict(state)
    missing.pop(key)
    with pytest.raises(ValueError, match=f"missing keys \\['{key}'\\]"):
        module.load_backbone_state_dict(missing)


def test_tied_t5_weights_load_through_one_name(tiny_t5):
    module = MultiTaskModule(tiny_t5, tasks=[spec(kind="text2text", labels=("negative", "positive"))])
    state = {k: v.clone() for k, v in module.backbone_state_dict().items()}
    state["shared.weight"] += 1.0
    module.load_backbone_state_dict(state)
    assert torch.equal(module.hf_model.lm_head.weight, state["shared.weight"])


def test_text2text_predictions_decode_to_class_indices(tiny_t5):
    module = MultiTaskModule(tiny_t5, tasks=[spec(kind="text2text", labels=("negative", "positive"))])
    verbalizer = module.verbalizers["a"]
    tok = verbalizer.tokenizer
    generated = tok(["positive", "Negative ", "maybe"], padding=True, return_tensors="pt")["input_ids"]
    assert verbalizer.decode(generated) == [1, 0, -1]  # unparsable -> -1 (scored as wrong)
    batch = dict(tok(["a funny movie"], return_tensors="pt"), labels=generated[:1], label_index=torch.tensor([1]),
                 task="a")
    loss, preds, targets = module.evaluate_batch(batch)
    assert preds.shape == (1,) and targets.tolist() == [1] and -1 <= int(preds[0]) <= 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tasks": [spec(kind="text2text")]}, "needs model family 'seq2seq'.*of family 'encoder'"),
        ({"tasks": [spec(kind="image_classification")]}, "needs model family 'vision'"),
        ({"tasks": [spec()], "family": "video"}, "unknown model family 'video'"),
        ({"tasks": [spec()], "family": "seq2seq"}, "needs an encoder-decoder model"),
        ({"tasks": [spec()], "lora": {"r": 2, "target_modules": ["query", "q_proj"]}},
         r"\['q_proj'\] not found.*available module names: \[.*'query'.*\]"),
        ({"tasks": [spec(), spec()]}, "duplicate task names \\['a'\\]"),
        ({"tasks": None}, "needs `tasks`"),
    ],
)
def test_bad_configuration_is_named_before_training(tiny_bert, kwargs, message):
    with pytest.raises(ValueError, match=message):
        MultiTaskModule(tiny_bert, **kwargs)


def test_target_the_tokenizer_cannot_spell_is_refused(tiny_t5):
    with pytest.raises(ValueError, match="round trip"):
        MultiTaskModule(tiny_t5, tasks=[spec(kind="text2text", labels=("négatif", "positive"))])


def test_batch_of_an_unknown_task_is_named(tiny_bert):
    module = MultiTaskModule(tiny_bert, tasks=[spec("a")])
    with pytest.raises(KeyError, match="batch task 'zzz'"):
        module.evaluate_batch(text_batch(tiny_bert, "zzz", [0, 1]))


def test_stage_metrics_average_primary_metrics(tiny_bert):
    module = MultiTaskModule(tiny_bert, tasks=[spec("a", metrics=["accuracy"]),
                                               spec("b", metrics=["mcc", "accuracy"])])
    module.task_metrics["val"]["a"].update(torch.tensor([1, 1, 0, 0]), torch.tensor([1, 1, 1, 1]))
    module.task_metrics["val"]["b"].update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    out = module.compute_stage_metrics("val")
    assert out["val/a/accuracy"] == pytest.approx(0.5)
    assert out["val/b/mcc"] == pytest.approx(1.0)
    assert out["val/avg/accuracy"] == pytest.approx(0.75)
    assert out["val/avg/score"] == pytest.approx((0.5 + 1.0) / 2)  # accuracy of a, mcc of b


def test_stage_metrics_skip_tasks_without_examples_and_report_the_loss(tiny_bert):
    module = MultiTaskModule(tiny_bert, tasks=[spec("a"), spec("b")])
    module.task_metrics["test"]["a"].update(torch.tensor([1, 0]), torch.tensor([1, 1]), torch.tensor(0.25))
    out, losses = module._stage_results("test")
    assert losses == {"test/a/loss": pytest.approx(0.25)}
    assert not any(key.startswith("test/b/") for key in out)
    assert out["test/avg/score"] == pytest.approx(0.5)


def test_classification_on_a_seq2seq_backbone_reads_the_encoder(tiny_t5):
    module = MultiTaskModule(tiny_t5, tasks=[spec("cls"), spec("gen", kind="text2text", labels=("negative", "positive"))],
                             pooling="mean")
    assert module.family == "seq2seq" and list(module.heads) == ["cls"]
    assert module(text_batch(tiny_t5, "cls", [0, 1])).shape == (2, 2)


def test_pooler_is_trained_only_when_a_head_reads_it(tiny_bert):
    cls = MultiTaskModule(tiny_bert, tasks=[spec()], pooling="cls")
    assert not any(p.requires_grad for p in cls.hf_model.pooler.parameters())
    pooled = MultiTaskModule(tiny_bert, tasks=[spec()], pooling="pooler")
    assert all(p.requires_grad for p in pooled.hf_model.pooler.parameters())
