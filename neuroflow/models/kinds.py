"""What each task kind needs from the model: the families that can serve it and its step class."""

from __future__ import annotations

from neuroflow.data.task_spec import TaskSpec
from neuroflow.models.llm_scoring import GenerationSteps, MultipleChoiceSteps
from neuroflow.models.steps_classification import ClassificationSteps, Text2TextSteps
from neuroflow.models.task_steps import TaskSteps

_KIND_FAMILIES = {
    "text_classification": ("encoder", "seq2seq"),
    "text2text": ("seq2seq",),
    "image_classification": ("vision",),
    "instruction": ("causal_lm",),
    "multiple_choice": ("causal_lm",),
    "generation": ("causal_lm",),
}
_HEADLESS_HINT = (" (a causal LM has no classification head: cast the task as `kind: multiple_choice` over its "
                  "label names, or load the backbone with `family: encoder`)")
_DECODER_HINT = " (the causal-LM kinds need a decoder-only model such as LLaMA, Mistral, Qwen2 or GPT-2)"
_STEPS: dict[str, type[TaskSteps]] = {
    "text_classification": ClassificationSteps,
    "image_classification": ClassificationSteps,
    "text2text": Text2TextSteps,
    "instruction": GenerationSteps,
    "generation": GenerationSteps,
    "multiple_choice": MultipleChoiceSteps,
}


def steps_for(kind: str) -> TaskSteps:
    """A fresh step object for one task kind."""
    return _STEPS[kind]()


def check_task_kinds(specs: list[TaskSpec], family: str, backbone: str) -> None:
    """Refuse tasks the backbone's family cannot serve, naming the task, its kind and the family.

    Args:
        specs: the model's tasks.
        family: the backbone's concrete family.
        backbone: the backbone reference (for the message).
    """
    for spec in specs:
        allowed = _KIND_FAMILIES[spec.kind]
        if family not in allowed:
            raise ValueError(
                f"task {spec.name!r} is {spec.kind}, which needs model family "
                f"{' or '.join(map(repr, allowed))}, but backbone {backbone!r} "
                f"is of family {family!r} (task key `kind`, model key `family`)"
                f"{_HEADLESS_HINT if family == 'causal_lm' else _DECODER_HINT if spec.is_llm else ''}"
            )
