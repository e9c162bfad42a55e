"""Choice log-likelihoods equal a hand computation, batched greedy generation equals generating
each prompt alone, stop strings cut answers, and the metrics are what the scores say."""

import pytest
import torch
from torch.nn import functional as F
from transformers import AutoTokenizer

from neuroflow.models import MultiTaskModule
from neuroflow.models.llm_scoring import cut_at_stop

from causal_helpers import arithmetic, sst2_choice, write_arithmetic


def eval_batch(dm, task: str, split: str = "validation") -> dict:
    dm.setup("fit")
    loader = dm.eval_dataloaders(split)[dm.task_names.index(task)]
    return next(iter(loader))


@torch.no_grad()
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_choice_loglikelihoods_equal_a_hand_computation(arch, causal_models, make_datamodule):
    path = causal_models[arch]
    dm = make_datamodule([sst2_choice()], tokenizer=path, max_length=48, max_target_length=8, eval_batch_size=6)
    module = MultiTaskModule(path, tasks=dm.task_specs).eval()
    batch = eval_batch(dm, "sst2_choice")
    ll, counts, _ = module.steps["multiple_choice"].score(module, batch)
    tok = AutoTokenizer.from_pretrained(path)
    rows = dm.split_data("validation")["sst2_choice"]
    for i in range(ll.shape[0]):
        prompt = rows[i]["prompt_ids"]
        for j, choice in enumerate(rows[i]["choice_ids"]):
            # lm-eval's procedure: forward prompt + choice alone, sum the choice tokens' log-probs.
            logits = module.hf_model(input_ids=torch.tensor([prompt + choice])).logits[0].float()
            logp = F.log_softmax(logits, -1)
            expected = sum(float(logp[len(prompt) + k - 1, t]) for k, t in enumerate(choice))
            torch.testing.assert_close(float(ll[i, j]), expected, rtol=1e-4, atol=1e-4)
            assert int(counts[i, j]) == len(choice)
        # The choice tokens are " negative" / " positive" as the whole string tokenizes them.
        whole = tok(tok.decode(prompt, skip_special_tokens=True) + " positive")["input_ids"]
        assert rows[i]["choice_ids"][1] == whole[len(prompt):]


@torch.no_grad()
def test_acc_and_acc_norm_follow_the_argmax(tiny_llama, make_datamodule):
    dm = make_datamodule([sst2_choice(choices=None, label_names=["bad", "wonderful"])], tokenizer=tiny_llama,
                         max_length=48, max_target_length=8, eval_batch_size=8)
    module = MultiTaskModule(tiny_llama, tasks=dm.task_specs).eval()
    batch = eval_batch(dm, "sst2_choice")
    ll, _, _ = module.steps["multiple_choice"].score(module, batch)
    metric = module.task_metrics["val"]["sst2_choice"]
    module.steps["multiple_choice"].eval_update(module, batch, metric)
    out = metric.compute()
    gold = batch["label_index"]
    assert float(out["acc"]) == pytest.approx(float((ll.argmax(1) == gold).double().mean()))
    chars = torch.tensor([[3.0, 9.0]])  # len("bad"), len("wonderful")
    assert torch.equal(batch["choice_chars"][0], chars[0])
    assert float(out["acc_norm"]) == pytest.approx(float(((ll / chars).argmax(1) == gold).double().mean()))
    assert int(out["num_examples"]) == len(gold) and float(out["loss"]) > 0
    assert int(out["num_truncated"]) == int(batch["prompt_truncated"].sum()) > 0  # long reviews, max_length 48


@torch.no_grad()
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_batched_left_padded_generation_equals_one_by_one(arch, causal_models, make_datamodule, tmp_path):
    path = causal_models[arch]
    task = arithmetic(write_arithmetic(tmp_path), stop=[])
    dm = make_datamodule([task], tokenizer=path, max_length=48, max_target_length=16, eval_batch_size=8)
    module = MultiTaskModule(path, tasks=dm.task_specs).eval()
    batch = eval_batch(dm, "arith")
    lengths = batch["prompt_attention_mask"].sum(1)
    assert len(set(lengths.tolist())) > 1  # really padded
    assert (batch["prompt_attention_mask"][:, -1] == 1).all()  # on the left
    answers = module.steps["generation"].answers(module, batch)
    tok = AutoTokenizer.from_pretrained(path)
    for i, answer in enumerate(answers):
        alone = batch["prompt_input_ids"][i, -int(lengths[i]):][None]
        out = module.hf_model.generate(input_ids=alone, attention_mask=torch.ones_like(alone), max_new_tokens=12,
                                       do_sample=False, pad_token_id=tok.eos_token_id)
        assert answer == tok.decode(out[0, alone.shape[1]:], skip_special_tokens=True)


def test_stop_strings_cut_the_answer():
    assert cut_at_stop("42\n\nQuestion: next", ["\n\n", "Question:"]) == "42"
    assert cut_at_stop("no stop here", ["\n"]) == "no stop here"
    assert cut_at_stop("a. b", [".", " "]) == "a"


@torch.no_grad()
def test_generation_metrics_and_predictions(tiny_llama, make_datamodule, tmp_path):
    dm = make_datamodule([arithmetic(write_arithmetic(tmp_path))], tokenizer=tiny_llama, max_length=48,
                         max_target_length=16, eval_batch_size=8)
    module = MultiTaskModule(tiny_llama, tasks=dm.task_specs).eval()
    batch = eval_batch(dm, "arith")
    steps = module.steps["generation"]
    answers = steps.answers(module, batch)
    assert all("\n\n" not in a and "Question:" not in a for a in answers)
    steps.eval_update(module, batch, module.task_metrics["val"]["arith"])
    out = module.task_metrics["val"]["arith"].compute()
    assert set(out) == {"numeric_match", "exact_match", "num_examples", "loss", "num_truncated", "num_nonfinite"}
    assert int(out["num_examples"]) == len(answers) and float(out["loss"]) > 0
    pred = module.predict_step(batch, 0)
    assert pred["preds"] == answers and pred["targets"] == batch["targets"]
    assert batch["targets"][0].split("#### ")[1].isdigit()
