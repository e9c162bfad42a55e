"""Steps of the causal-LM kinds: choice log-likelihoods (lm-eval style) and greedy generation.

- `multiple_choice`: every (example, choice) row of the batch is scored in one forward; the
  choice's log-likelihood is the sum of its tokens' log-probabilities given the prompt. `acc` takes
  the argmax of the sums, `acc_norm` of the sums divided by the choices' lengths in characters (as
  lm-evaluation-harness does); the first maximum wins ties. The loss is the gold choice's NLL per token.
- `instruction` / `generation`: the teacher-forced loss on the target, then greedy decoding of
  the left-padded prompts up to `max_new_tokens`, stopped and cut at the task's `stop` strings,
  scored against the gold target by the task's scorers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torchmetrics import Metric

from neuroflow.models.causal_lm import causal_loss, labelled_logprobs
from neuroflow.models.llm_metrics import LMTaskMetrics, Scorer, load_scorer
from neuroflow.models.task_steps import TaskSteps

if TYPE_CHECKING:
    from neuroflow.data.task_spec import TaskSpec
    from neuroflow.models.multitask_module import MultiTaskModule


def cut_at_stop(text: str, stop: list[str]) -> str:
    """`text` up to the first occurrence of any stop string."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=len(text))
    return text[:cut]


@torch.no_grad()
def generate_answers(model: Any, tokenizer: Any, batch: dict[str, Any], spec: TaskSpec) -> list[str]:
    """Greedy continuations of a batch's left-padded prompts, decoded and cut at `spec.stop`.

    The generation settings are built here, not read from the checkpoint's generation config
    (which may ask for sampling), so scoring is always greedy.
    """
    from transformers import GenerationConfig

    config = GenerationConfig(
        max_new_tokens=int(spec.max_new_tokens), do_sample=False, num_beams=1,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id, stop_strings=list(spec.stop) or None,
    )
    prompts = batch["prompt_input_ids"]
    kwargs = {"tokenizer": tokenizer} if spec.stop else {}
    out = model.generate(input_ids=prompts, attention_mask=batch["prompt_attention_mask"],
                         generation_config=config, **kwargs)
    texts = tokenizer.batch_decode(out[:, prompts.shape[1]:], skip_special_tokens=True)
    return [cut_at_stop(t, list(spec.stop)) for t in texts]


class CausalSteps(TaskSteps):
    """Shared by the causal-LM kinds: training is the loss on the target tokens."""

    def training_loss(self, module: MultiTaskModule, batch: dict[str, Any]) -> torch.Tensor:
        return causal_loss(module.hf_model, batch)


class MultipleChoiceSteps(CausalSteps):
    """`multiple_choice`: log-likelihood of every choice, `acc` and `acc_norm`."""

    def make_metric(self, spec: TaskSpec) -> Metric:
        return LMTaskMetrics(spec.metrics)

    @staticmethod
    def score(module: MultiTaskModule, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log-likelihoods B x K, token counts B x K, rows with non-finite logits B)."""
        sums, counts, nonfinite = labelled_logprobs(
            module.hf_model, batch["choice_input_ids"], batch["choice_attention_mask"], batch["choice_labels"])
        b = batch["label_index"].shape[0]
        return sums.view(b, -1), counts.view(b, -1), nonfinite.view(b, -1).any(dim=1)

    def evaluate(self, module: MultiTaskModule, batch: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        ll, counts, nonfinite = self.score(module, batch)
        gold = batch["label_index"]
        gold_ll = ll.gather(1, gold[:, None]).sum()
        loss = -gold_ll / counts.gather(1, gold[:, None]).sum().clamp(min=1)
        return loss, ll.argmax(dim=1), gold, nonfinite.sum()

    def eval_update(self, module: MultiTaskModule, batch: dict[str, Any], metric: Metric) -> torch.Tensor:
        ll, counts, nonfinite = self.score(module, batch)
        gold = batch["label_index"]
        predictions = {"acc": ll.argmax(dim=1),
                       "acc_norm": (ll / batch["choice_chars"].clamp(min=1)).argmax(dim=1)}
        scores = torch.stack([(predictions[m] == gold) for m in metric.metric_names], dim=1)
        gold_tokens = counts.gather(1, gold[:, None]).sum()
        gold_nll = -ll.gather(1, gold[:, None]).sum()
        metric.update(scores, gold_nll, gold_tokens, batch["prompt_truncated"].sum(), nonfinite.sum())
        return gold_nll / gold_tokens.clamp(min=1)

    def predict(self, module: MultiTaskModule, batch: dict[str, Any]) -> dict[str, Any]:
        ll, _, _ = self.score(module, batch)
        return {"task": batch["task"], "preds": ll.argmax(dim=1), "targets": batch["label_index"],
                "loglikelihoods": ll}


class GenerationSteps(CausalSteps):
    """`instruction` / `generation`: teacher-forced loss, greedy answers scored by the task's scorers."""

    def __init__(self) -> None:
        self.scorers: dict[str, list[Scorer]] = {}

    def make_metric(self, spec: TaskSpec) -> Metric:
        # Built (imported) here, at construction, so a bad scorer path fails before training.
        self.scorers[spec.name] = [load_scorer(m, spec.name) for m in spec.metrics]
        return LMTaskMetrics(spec.metrics)

    def answers(self, module: MultiTaskModule, batch: dict[str, Any]) -> list[str]:
        return generate_answers(module.hf_model, module.lm_tokenizer, batch, module.task_specs[batch["task"]])

    def eval_update(self, module: MultiTaskModule, batch: dict[str, Any], metric: Metric) -> torch.Tensor:
        sums, counts, nonfinite = labelled_logprobs(
            module.hf_model, batch["input_ids"], batch["attention_mask"], batch["labels"])
        answers = self.answers(module, batch)
        scorers = self.scorers[batch["task"]]
        scores = torch.tensor([[float(s(a, gold)) for s in scorers] for a, gold in zip(answers, batch["targets"])],
                              dtype=torch.float64).reshape(len(answers), len(scorers))
        nll, tokens = -sums.sum(), counts.sum()
        metric.update(scores, nll, tokens, batch["prompt_truncated"].sum(), nonfinite.sum())
        return nll / tokens.clamp(min=1)

    def predict(self, module: MultiTaskModule, batch: dict[str, Any]) -> dict[str, Any]:
        return {"task": batch["task"], "preds": self.answers(module, batch), "targets": list(batch["targets"])}
