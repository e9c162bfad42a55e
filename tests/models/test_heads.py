import pytest
import torch

from neuroflow.models.heads import ClassificationHead


def _head(pooling: str) -> ClassificationHead:
    head = ClassificationHead(hidden_size=2, num_labels=1, pooling=pooling, dropout=0.0)
    with torch.no_grad():
        head.linear.weight.copy_(torch.tensor([[1.0, 10.0]]))
        head.linear.bias.zero_()
    return head


def test_cls_mean_and_pooler_pooling():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])  # last token is padding
    mask = torch.tensor([[1, 1, 0]])
    assert _head("cls")(hidden, mask).item() == pytest.approx(1 + 20)
    assert _head("mean")(hidden, mask).item() == pytest.approx(2 + 30)  # mean of first two tokens
    pooled = torch.tensor([[0.5, 0.5]])
    assert _head("pooler")(hidden, mask, pooled).item() == pytest.approx(0.5 + 5)


def test_pooler_pooling_without_pooler_output_is_an_error():
    with pytest.raises(ValueError, match="pooler_output"):
        _head("pooler")(torch.zeros(1, 2, 2))


def test_unknown_pooling_is_rejected():
    with pytest.raises(ValueError, match="unknown pooling 'max'"):
        ClassificationHead(4, 2, pooling="max")


def test_config_rebuilds_the_same_head():
    head = ClassificationHead(8, 3, pooling="mean", dropout=0.2)
    assert ClassificationHead(**head.config()).config() == head.config()
