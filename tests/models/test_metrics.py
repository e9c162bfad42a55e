import pytest
import torch
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_f1_score,
    multiclass_matthews_corrcoef,
)

from neuroflow.models.metrics import TaskMetrics, mcc_from_confusion


def test_matches_torchmetrics_on_random_predictions():
    gen = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (200,), generator=gen)
    preds = torch.where(torch.rand(200, generator=gen) < 0.6, target, torch.randint(0, 4, (200,), generator=gen))
    metric = TaskMetrics(4, ["accuracy", "f1_macro", "mcc"])
    metric.update(preds[:120], target[:120])
    metric.update(preds[120:], target[120:])  # accumulates across batches
    out = metric.compute()
    assert out["accuracy"].item() == pytest.approx(
        multiclass_accuracy(preds, target, 4, average="micro").item(), abs=1e-6)
    assert out["f1_macro"].item() == pytest.approx(
        multiclass_f1_score(preds, target, 4, average="macro").item(), abs=1e-6)
    assert out["mcc"].item() == pytest.approx(multiclass_matthews_corrcoef(preds, target, 4).item(), abs=1e-5)


def test_hand_computed_binary_values():
    # targets 1,1,1,0,0 ; preds 1,0,1,0,1 -> TP=2 FN=1 FP=1 TN=1
    metric = TaskMetrics(2, ["accuracy", "f1", "mcc"])
    metric.update(torch.tensor([1, 0, 1, 0, 1]), torch.tensor([1, 1, 1, 0, 0]))
    out = metric.compute()
    assert out["accuracy"].item() == pytest.approx(3 / 5)
    assert out["f1"].item() == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    expected_mcc = (2 * 1 - 1 * 1) / ((3 * 3 * 2 * 2) ** 0.5)  # (TP*TN - FP*FN)/sqrt(...)
    assert out["mcc"].item() == pytest.approx(expected_mcc, abs=1e-6)


def test_invalid_predictions_count_as_wrong_but_not_as_a_class():
    metric = TaskMetrics(3, ["accuracy", "f1_macro"])
    # class 0: 1 right, 1 invalid; class 1: right; class 2: right
    metric.update(torch.tensor([0, -1, 1, 2]), torch.tensor([0, 0, 1, 2]))
    out = metric.compute()
    assert out["accuracy"].item() == pytest.approx(0.75)
    # F1: class 0 = 2*1/(2+1) ; classes 1, 2 = 1 ; the invalid column is not averaged in
    assert out["f1_macro"].item() == pytest.approx((2 / 3 + 1 + 1) / 3)


def test_constant_predictions_give_zero_mcc():
    cm = torch.tensor([[5.0, 0.0], [3.0, 0.0]])
    assert mcc_from_confusion(cm).item() == 0.0


def test_out_of_range_targets_are_rejected():
    metric = TaskMetrics(2, ["accuracy"])
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        metric.update(torch.tensor([0]), torch.tensor([2]))


def test_loss_is_the_example_weighted_mean_and_the_count_is_reported():
    metric = TaskMetrics(2, ["accuracy"])
    metric.update(torch.tensor([1, 0, 1]), torch.tensor([1, 1, 1]), torch.tensor(0.5))
    metric.update(torch.tensor([0]), torch.tensor([0]), 2.0)
    out = metric.compute()
    assert out["num_examples"].item() == 4
    assert out["loss"].item() == pytest.approx((3 * 0.5 + 1 * 2.0) / 4)
    assert out["accuracy"].item() == pytest.approx(3 / 4)


def test_empty_metric_computes_without_error():
    out = TaskMetrics(3, ["accuracy", "mcc"]).compute()
    assert out["num_examples"].item() == 0 and out["accuracy"].item() == 0.0
