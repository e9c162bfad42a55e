"""The causal-LM task kinds of a `TaskSpec`: their fields, metrics and checks.

- `instruction`: `prompt_template` -> a target (`target_column`, or the verbalized label); trained
  with the loss on the target tokens only; scored by greedy decoding (`exact_match` by default).
- `multiple_choice`: a prompt and `choices` (columns, or the verbalizer over the label names);
  scored like lm-evaluation-harness (log-likelihood of each choice given the prompt: `acc` on the
  sum, `acc_norm` on the sum divided by the choice's length in characters); trained as
  `instruction` on the gold choice.
- `generation`: greedy decoding up to `max_new_tokens`, cut at `stop` strings; `exact_match`,
  `numeric_match` (GSM8K style, the last number) or a scorer class path.

This module only checks the spec (no file access); the columns are checked when the task loads.
"""

from __future__ import annotations

import string
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from neuroflow.data.task_spec import TaskSpec

LLM_KINDS: tuple[str, ...] = ("instruction", "multiple_choice", "generation")
CHOICE_METRICS: tuple[str, ...] = ("acc", "acc_norm")
GENERATION_METRICS: tuple[str, ...] = ("exact_match", "numeric_match")
_CLASSIFICATION_DEFAULT = ["accuracy"]


def default_metrics(kind: str) -> list[str]:
    """The metrics a task of `kind` gets when its spec names none."""
    if kind == "multiple_choice":
        return list(CHOICE_METRICS)
    if kind in ("instruction", "generation"):
        return ["exact_match"]
    return list(_CLASSIFICATION_DEFAULT)


def is_scorer_path(metric: str) -> bool:
    """A user scorer is named by its class path (`my_pkg.metrics.MyScorer`)."""
    return "." in metric


def metric_key(metric: str) -> str:
    """The name a metric is logged under: itself, or a scorer class path's last component."""
    return metric.rsplit(".", 1)[-1] if is_scorer_path(metric) else metric


def template_fields(template: str, where: str, key: str = "prompt_template") -> list[str]:
    """The column names a `{column}` template uses, in order of first use.

    Raises:
        ValueError: bad brace syntax or positional fields (`{}`, `{0}`), naming `where` and `key`.
    """
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise ValueError(
            f"{where}: `{key}` {template!r} is not a valid template ({err}); write literal braces as {{{{ }}}}"
        ) from err
    fields: list[str] = []
    for _, name, _, _ in parsed:
        if name is None:
            continue
        column = name.split(".", 1)[0].split("[", 1)[0]
        if not column or column.isdigit():
            raise ValueError(f"{where}: `{key}` {template!r} has a positional field; name a column, e.g. {{text}}")
        if column not in fields:
            fields.append(column)
    return fields


def _check_metrics(spec: TaskSpec, where: str) -> None:
    allowed = CHOICE_METRICS if spec.kind == "multiple_choice" else GENERATION_METRICS
    if not spec.metrics:
        raise ValueError(f"{where}: `metrics` is empty; give at least one of {list(allowed)}")
    for metric in spec.metrics:
        if metric in allowed or (spec.kind != "multiple_choice" and is_scorer_path(metric)):
            continue
        extra = " or a scorer class path (my_pkg.metrics.MyScorer)" if spec.kind != "multiple_choice" else ""
        raise ValueError(f"{where}: unknown metrics [{metric!r}] for kind {spec.kind}; known: {list(allowed)}{extra}")
    keys = [metric_key(m) for m in spec.metrics]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{where}: `metrics` {spec.metrics} log under duplicate names {keys}")


def validate_llm_fields(spec: TaskSpec) -> None:
    """Check the fields of an `instruction`, `multiple_choice` or `generation` spec.

    Raises:
        ValueError: names the task and the offending key.
    """
    where = f"task {spec.name!r}"
    if not spec.prompt_template:
        raise ValueError(f"{where}: kind {spec.kind} needs `prompt_template`, e.g. 'Review: {{text}}\\nSentiment:'")
    template_fields(spec.prompt_template, where)
    if spec.input_template is not None:
        raise ValueError(f"{where}: `input_template` is for text2text; causal-LM kinds use `prompt_template`")
    if spec.text_pair_column or spec.image_column:
        raise ValueError(f"{where}: kind {spec.kind} reads its columns through `prompt_template`, not "
                         "`text_pair_column`/`image_column`")
    if len(set(map(str, spec.label_names))) != len(spec.label_names):
        raise ValueError(f"{where}: `label_names` has duplicates: {spec.label_names!r}")
    if spec.verbalizer is not None and len(spec.verbalizer) != len(spec.label_names):
        raise ValueError(
            f"{where}: `verbalizer` has {len(spec.verbalizer)} entries for {len(spec.label_names)} labels"
        )
    if spec.kind == "multiple_choice":
        if spec.target_column is not None:
            raise ValueError(f"{where}: multiple_choice scores `choices`; `target_column` does not apply")
        if spec.choices is not None:
            if len(spec.choices) < 2:
                raise ValueError(f"{where}: `choices` needs at least 2 entries, got {spec.choices!r}")
            if len(spec.label_names) != len(spec.choices):
                raise ValueError(
                    f"{where}: `label_names` has {len(spec.label_names)} entries for {len(spec.choices)} `choices`"
                )
        elif len(spec.targets) < 2:
            raise ValueError(
                f"{where}: `choices` (here the verbalizer / label_names) needs at least 2 entries, got {spec.targets!r}"
            )
        if len(set(spec.choice_texts or [])) != len(spec.choice_texts or []):
            raise ValueError(f"{where}: the choices {spec.choice_texts} are not distinct")
    else:
        if spec.choices is not None:
            raise ValueError(f"{where}: `choices` only applies to multiple_choice, not to {spec.kind}")
        if spec.target_column is None and len(spec.label_names) < 2:
            raise ValueError(
                f"{where}: kind {spec.kind} needs `target_column`, or `label_names` (>= 2) to verbalize the label"
            )
        if int(spec.max_new_tokens) < 1:
            raise ValueError(f"{where}: `max_new_tokens` must be >= 1, got {spec.max_new_tokens}")
        if not isinstance(spec.stop, list) or any(not isinstance(s, str) or not s for s in spec.stop):
            raise ValueError(f"{where}: `stop` must be a list of non-empty strings, got {spec.stop!r}")
    _check_metrics(spec, where)
