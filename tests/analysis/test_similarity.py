"""Task-vector cosine similarities from Gram matrices that add up over tensors."""

import math

import pytest
import torch

from neuroflow.analysis import cosine_matrix, gram


def test_orthogonal_task_vectors_have_cosine_zero():
    x = torch.tensor([[1.0, 0.0, 2.0, 0.0], [0.0, 3.0, 0.0, -1.0]])
    cos = cosine_matrix(gram(x))
    assert cos[0, 1].item() == 0.0 and cos[0, 0].item() == pytest.approx(1.0)


def test_parallel_and_opposite_vectors():
    v = torch.tensor([1.0, -2.0, 0.5])
    cos = cosine_matrix(gram(torch.stack([v, 2 * v, -v])))
    assert cos[0, 1].item() == pytest.approx(1.0) and cos[0, 2].item() == pytest.approx(-1.0)


def test_gram_adds_up_over_tensors_and_zero_vectors_are_undefined():
    a, b = torch.randn(3, 5, 4), torch.randn(3, 7)
    whole = gram(torch.cat([a.reshape(3, -1), b], dim=1))
    torch.testing.assert_close(gram(a) + gram(b), whole, rtol=1e-12, atol=1e-12)
    cos = cosine_matrix(gram(torch.stack([torch.zeros(3), torch.ones(3)])))
    assert math.isnan(cos[0, 1].item()) and cos[1, 1].item() == pytest.approx(1.0)
