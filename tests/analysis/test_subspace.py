"""Parallel / orthogonal energy of task updates against the pre-trained neurons, on known cases."""

import pytest
import torch

from neuroflow.analysis import neuron_energy, parallel_fraction, tensor_statistics
from neuroflow.analysis import subspace
from neuroflow.merging import NEURON_COLUMNS, NEURON_ROWS


def _rows(seed: int = 0, rows: int = 5, fan_in: int = 7) -> torch.Tensor:
    return torch.randn(rows, fan_in, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_update_parallel_to_w0_has_parallel_fraction_one():
    w0 = _rows()
    scale = torch.tensor([0.5, -2.0, 1e-3, 3.0, -0.1], dtype=torch.float64)
    par, orth = neuron_energy(w0, (scale[:, None] * w0)[None])
    assert parallel_fraction(par, orth).item() == pytest.approx(1.0, abs=1e-12)
    assert par.item() == pytest.approx(float(((scale[:, None] * w0) ** 2).sum()), rel=1e-12)


def test_update_orthogonal_to_w0_has_parallel_fraction_zero():
    w0, raw = _rows(0), _rows(1)
    ortho = raw - ((raw * w0).sum(-1, keepdim=True) / (w0 * w0).sum(-1, keepdim=True)) * w0
    par, orth = neuron_energy(w0, ortho[None])
    assert parallel_fraction(par, orth).item() == pytest.approx(0.0, abs=1e-12)
    assert orth.item() == pytest.approx(float((ortho ** 2).sum()), rel=1e-12)


def test_energies_add_up_to_the_update_energy_per_task():
    w0, tau = _rows(0), torch.stack([_rows(1), _rows(2), 3 * _rows(0) + _rows(3)])
    par, orth = neuron_energy(w0, tau)
    torch.testing.assert_close(par + orth, (tau ** 2).sum(dim=(1, 2)), rtol=1e-12, atol=0)
    # The third task is mostly along w0: its parallel share is the largest.
    assert int(parallel_fraction(par, orth).argmax()) == 2


def test_hand_computed_case():
    # w0 = (1, 0) and tau = (3, 4): s = 3, parallel (3, 0) energy 9, orthogonal (0, 4) energy 16.
    par, orth = neuron_energy(torch.tensor([[1.0, 0.0]]), torch.tensor([[[3.0, 4.0]]]))
    assert (par.item(), orth.item()) == (9.0, 16.0)
    assert parallel_fraction(par, orth).item() == pytest.approx(9 / 25)


def test_zero_pretrained_row_counts_as_orthogonal_and_no_update_is_undefined():
    w0 = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    par, orth = neuron_energy(w0, torch.tensor([[[1.0, 2.0], [0.0, 0.0]]]))
    assert (par.item(), orth.item()) == (0.0, 5.0)
    nothing = parallel_fraction(*neuron_energy(w0, torch.zeros(1, 2, 2)))
    assert torch.isnan(nothing).all()


def test_row_blocks_give_the_same_sums(monkeypatch):
    w0, tau = _rows(0, rows=40, fan_in=3), torch.stack([_rows(1, 40, 3), _rows(2, 40, 3)])
    whole = neuron_energy(w0, tau)
    monkeypatch.setattr(subspace, "_BLOCK_ELEMENTS", 7)  # 1 row per block
    blocked = neuron_energy(w0, tau)
    for a, b in zip(whole, blocked):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)


def test_columns_route_uses_columns_as_neurons():
    # GPT-2 Conv1D stores (in, out): neurons are columns. An update scaling each column of w0 is
    # parallel under the columns route, not under the rows route.
    w0 = _rows(0, rows=4, fan_in=6).float()
    tau = (w0 * torch.linspace(-1, 1, 6))[None].repeat(2, 1, 1)
    cols = tensor_statistics(w0, tau.clone(), NEURON_COLUMNS, [None, None])
    rows = tensor_statistics(w0, tau.clone(), NEURON_ROWS, [None, None])
    assert parallel_fraction(cols.parallel, cols.orthogonal).tolist() == pytest.approx([1.0, 1.0], abs=1e-6)
    assert parallel_fraction(rows.parallel, rows.orthogonal)[0] < 0.9
    assert (cols.neuron_rows, rows.neuron_rows) == (6, 4)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="expected w0"):
        neuron_energy(torch.zeros(3, 2), torch.zeros(1, 2, 3))
