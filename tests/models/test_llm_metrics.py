"""Numeric answer extraction on tricky strings, exact match, user scorers, metric states."""

import pytest
import torch
from decimal import Decimal

from neuroflow.models.llm_metrics import LMTaskMetrics, exact_match, extract_number, load_scorer, numeric_match


class HalfCredit:
    """A user scorer: 1 for an exact answer, 0.5 when the gold text is contained."""

    def __call__(self, prediction: str, reference: str) -> float:
        return 1.0 if prediction.strip() == reference else 0.5 if reference in prediction else 0.0


@pytest.mark.parametrize("text, number", [
    ("#### 72", "72"),
    ("Natalia sold 48/2 = 24 clips in May.\nAltogether she sold 48+24 = 72 clips.\n#### 72", "72"),
    ("#### 72\n\nQuestion: how many are 5 and 6?", "72"),          # after ####, not the last number
    ("The answer is 1,234.", "1234"),                             # thousands separator, trailing period
    ("It costs $1,234.50 in total.", "1234.5"),                   # dollar sign, decimals
    ("so the result is 72.", "72"),
    ("x = -3", "-3"), ("a loss of -$5", "-5"), ("$-5 each", "-5"), ("+7 degrees", "7"), ("\u22124.5", "-4.5"),
    ("10-5", "5"),                                                # a hyphen between numbers is no sign
    ("1,2,3", "3"),                                               # a list, not a thousands number
    ("half is .5", "0.5"), ("3.0", "3"), ("100%", "100"), ("answer:42", "42"),
    ("version v2 has 3 bugs", "3"), ("abc123", None), ("no digits here", None), ("", None),
])
def test_extract_number(text, number):
    assert extract_number(text) == (None if number is None else Decimal(number))


def test_numeric_and_exact_match():
    assert numeric_match("so 72.00 clips", "... #### 72") == 1.0
    assert numeric_match("1,000,000", "#### 1000000") == 1.0
    assert numeric_match("73", "#### 72") == 0.0
    assert numeric_match("72", "no number in the gold") == 0.0
    assert numeric_match("nothing", "#### 0") == 0.0
    assert exact_match("  Positive \n", "positive") == 1.0 and exact_match("positive!", "positive") == 0.0


def test_user_scorer_by_class_path_and_bad_paths():
    scorer = load_scorer(f"{__name__}.HalfCredit", "t")
    assert scorer("the answer 7", "7") == 0.5
    assert load_scorer("numeric_match", "t") is numeric_match
    with pytest.raises(ValueError, match="task 't': metric 'no_such_module.Scorer': cannot build"):
        load_scorer("no_such_module.Scorer", "t")
    with pytest.raises(ValueError, match="task 't': unknown metric 'bleu'"):
        load_scorer("bleu", "t")


def test_metric_state_means_sums_and_counts():
    metric = LMTaskMetrics(["exact_match", f"{__name__}.HalfCredit"])
    assert metric.metric_names == ["exact_match", "HalfCredit"]
    metric.update(torch.tensor([[1.0, 0.5], [0.0, 0.0]]), loss_sum=6.0, loss_tokens=3, truncated=1, nonfinite=0)
    metric.update(torch.tensor([[1.0, 1.0]]), loss_sum=2.0, loss_tokens=1, truncated=torch.tensor(0))
    out = metric.compute()
    assert float(out["exact_match"]) == pytest.approx(2 / 3) and float(out["HalfCredit"]) == pytest.approx(0.5)
    assert float(out["loss"]) == pytest.approx(2.0) and int(out["num_examples"]) == 3
    assert int(out["num_truncated"]) == 1 and int(out["num_nonfinite"]) == 0
    empty = LMTaskMetrics(["acc"]).compute()
    assert int(empty["num_examples"]) == 0 and float(empty["acc"]) == 0.0
