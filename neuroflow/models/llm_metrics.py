"""Metrics of the causal-LM kinds: per-example scores summed in torchmetrics states.

Every metric is a mean of per-example scores (0/1 for `acc`, `acc_norm`, `exact_match`,
`numeric_match`; any float for a user scorer), kept as sums and a count that are all-reduced once
at the end of the stage, so the numbers of several processes equal those of one (exactly for 0/1
scores; a user scorer's float sums can differ in the last bits with the summation order).

`numeric_match` compares the number a GSM8K-style answer ends with: the first number after the
last `####` when there is one, else the last number in the text. Thousands separators (`1,234`),
signs (`-3`, `+3`, `−3`), decimals (`3.50` equals `3.5`), a `$` before or after the sign and
a trailing period (`72.`) are handled; generated text is only parsed, never executed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation

import torch
from torchmetrics import Metric

from neuroflow.class_paths import import_path
from neuroflow.data.llm_spec import is_scorer_path, metric_key
from neuroflow.models.verbalizer import normalize_answer

Scorer = Callable[[str, str], float]

_NUMBER = re.compile(
    r"(?<![\w.])(?P<sign>[-+\u2212]?)\s?\$?\s?(?P<sign2>[-+]?)"
    r"(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
)


def _value(match: re.Match[str]) -> Decimal | None:
    try:
        value = Decimal(match.group("num").replace(",", ""))
    except InvalidOperation:  # pragma: no cover - the pattern only matches digits
        return None
    negative = match.group("sign") in ("-", "\u2212") or match.group("sign2") == "-"
    return -value if negative else value


def extract_number(text: str) -> Decimal | None:
    """The answer number of `text`: after the last `####` if present, else the last number."""
    if "####" in text:
        found = _NUMBER.search(text.rsplit("####", 1)[1])
        if found:
            return _value(found)
    matches = list(_NUMBER.finditer(text))
    return _value(matches[-1]) if matches else None


def numeric_match(prediction: str, reference: str) -> float:
    """1.0 when both texts yield the same number (`extract_number`), else 0.0."""
    gold = extract_number(reference)
    return float(gold is not None and extract_number(prediction) == gold)


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the texts are equal after stripping, collapsing whitespace and lower-casing."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


BUILTIN_SCORERS: dict[str, Scorer] = {"exact_match": exact_match, "numeric_match": numeric_match}


def load_scorer(metric: str, task: str) -> Scorer:
    """A built-in scorer by name, or a user scorer class by path (instantiated without arguments;
    `scorer(prediction, reference) -> float`).

    Raises:
        ValueError: unknown name, unimportable class, or an instance that is not callable; names
            the task and the metric.
    """
    if metric in BUILTIN_SCORERS:
        return BUILTIN_SCORERS[metric]
    if not is_scorer_path(metric):
        raise ValueError(f"task {task!r}: unknown metric {metric!r}; known: {sorted(BUILTIN_SCORERS)} or a class path")
    cls = import_path(metric)
    if cls is None:
        raise ValueError(f"task {task!r}: metric {metric!r}: cannot build the scorer class: it does not import")
    try:
        scorer = cls()
    except TypeError as err:
        raise ValueError(f"task {task!r}: metric {metric!r}: cannot build the scorer class: {err}") from err
    if not callable(scorer):
        raise ValueError(f"task {task!r}: metric {metric!r}: a scorer must be callable as scorer(prediction, reference)")
    return scorer


class LMTaskMetrics(Metric):
    """Means of per-example scores of one causal-LM task, plus its token-level loss.

    Args:
        metrics: the task's metric names (`TaskSpec.metrics`), first = primary.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, metrics: list[str] | tuple[str, ...] = ("exact_match",)) -> None:
        super().__init__()
        self.metric_names = [metric_key(m) for m in metrics]
        self.add_state("score_sums", default=torch.zeros(len(self.metric_names), dtype=torch.float64),
                       dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        # Token-level loss as a sum and a count, so the stage's mean weighs every target token once.
        self.add_state("loss_sum", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("loss_tokens", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("truncated", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("nonfinite", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(
        self,
        scores: torch.Tensor,
        loss_sum: torch.Tensor | float = 0.0,
        loss_tokens: torch.Tensor | float = 0.0,
        truncated: torch.Tensor | int = 0,
        nonfinite: torch.Tensor | int = 0,
    ) -> None:
        """Add a batch: `scores` (N x number of metrics), the summed token NLL and its token count,
        the number of truncated prompts and of examples with non-finite logits."""
        scores = scores.detach().to(self.score_sums.device, torch.float64).reshape(-1, len(self.metric_names))
        self.score_sums += scores.sum(dim=0)
        self.count += scores.shape[0]
        for name, value in (("loss_sum", loss_sum), ("loss_tokens", loss_tokens), ("truncated", truncated),
                            ("nonfinite", nonfinite)):
            state = getattr(self, name)
            # Stays on the device: a `float()` here would stall every GPU evaluation step.
            state += torch.as_tensor(value, device=state.device).detach().to(state.dtype)

    def compute(self) -> dict[str, torch.Tensor]:
        count = self.count
        out = {name: (self.score_sums[i] / count if count > 0 else torch.zeros((), dtype=count.dtype)).float()
               for i, name in enumerate(self.metric_names)}
        out["num_examples"] = count
        out["loss"] = (self.loss_sum / self.loss_tokens if self.loss_tokens > 0 else torch.zeros(())).float()
        out["num_truncated"] = self.truncated
        out["num_nonfinite"] = self.nonfinite
        return out
