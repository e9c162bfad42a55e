"""Task Arithmetic: base + scaling * sum of task vectors, on hand-built tensors."""

from __future__ import annotations

import torch

from neuroflow.merging import TaskArithmetic, merge_state_dicts


def test_scaled_sum_of_task_vectors() -> None:
    base = {"w": torch.tensor([[1.0, 2.0]]), "b": torch.tensor([0.5])}
    experts = [{"w": torch.tensor([[2.0, 1.0]]), "b": torch.tensor([1.5])}, {"w": torch.tensor([[4.0, 2.5]]), "b": torch.tensor([0.0])}]
    out = merge_state_dicts(base, experts, TaskArithmetic(scaling=0.3))
    # task vectors: w (1, -1) + (3, 0.5) = (4, -0.5); b 1 - 0.5 = 0.5
    assert torch.allclose(out["w"], torch.tensor([[2.2, 1.85]]))
    assert torch.allclose(out["b"], torch.tensor([0.65]))
    assert TaskArithmetic().hparams() == {"scaling": 0.3}


def test_default_scaling_is_point_three() -> None:
    base = {"w": torch.zeros(2)}
    out = merge_state_dicts(base, [{"w": torch.ones(2)}], TaskArithmetic())
    assert torch.allclose(out["w"], torch.full((2,), 0.3))
