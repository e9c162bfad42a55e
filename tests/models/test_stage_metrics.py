"""NaN/Inf logits during evaluation stop the run with an error naming the task (they are not
scored as wrong predictions), for classification heads and causal-LM tasks alike."""

import pytest
import torch

from neuroflow.models import MultiTaskModule
from neuroflow.models.metrics import TaskMetrics
from neuroflow.models.stage_metrics import stage_results

from causal_helpers import sst2_choice


def test_a_nonfinite_count_raises_naming_the_task():
    metric = TaskMetrics(2)
    metric.update(torch.tensor([0, 1]), torch.tensor([0, 1]), 0.5, nonfinite=torch.tensor(1))
    with pytest.raises(FloatingPointError, match="task 'reviews': 1 val example"):
        stage_results({"reviews": metric}, {}, "val")


def test_nan_head_logits_raise_in_validate(tiny_bert, make_datamodule, make_trainer):
    dm = make_datamodule(["trec"], tokenizer=tiny_bert)
    module = MultiTaskModule(tiny_bert, tasks=dm.task_specs)
    with torch.no_grad():
        module.heads["trec"].linear.bias[2] = float("nan")
    with pytest.raises(FloatingPointError, match="task 'trec': 32 val example\\(s\\) produced NaN/Inf logits"):
        make_trainer().validate(module, dm, verbose=False)


@pytest.mark.parametrize("kind", ["multiple_choice", "instruction"])
def test_inf_lm_logits_raise_in_validate(kind, tiny_llama, make_datamodule, make_trainer):
    task = sst2_choice() if kind == "multiple_choice" else sst2_choice(kind="instruction", metrics=None)
    dm = make_datamodule([task], tokenizer=tiny_llama, max_length=48, max_target_length=8, max_eval_examples=8)
    module = MultiTaskModule(tiny_llama, tasks=dm.task_specs)
    with torch.no_grad():
        module.hf_model.lm_head.weight[5] = float("inf")
    with pytest.raises(FloatingPointError, match="task 'sst2_choice': 8 val example"):
        make_trainer().validate(module, dm, verbose=False)
