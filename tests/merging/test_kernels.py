"""The compiled kernels give the torch steps' values (TIES bit for bit, the selection's thresholds
exactly and its masses to float rounding), on hand-built tensors and against the torch path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuroflow.merging import kernels, steps
from neuroflow.merging.select import streamed_trim_statistics, tensor_stream
from neuroflow.merging.steps import TieFallback, ties_merge

pytest.importorskip("numba")


@pytest.fixture
def torch_path(monkeypatch):
    """Runs a callable with the kernels turned off."""

    def run(fn, *args, **kwargs):
        with monkeypatch.context() as patch:
            patch.setattr(kernels, "_compiled", lambda: None)
            return fn(*args, **kwargs)

    return run


def test_kernels_are_in_use() -> None:
    assert kernels.enabled()


def test_env_switch_turns_them_off(monkeypatch) -> None:
    monkeypatch.setenv("NEUROFLOW_KERNELS", "0")
    kernels._compiled.cache_clear()
    try:
        assert not kernels.enabled()
        assert kernels.ties_columns(torch.ones(2, 3), None, None) is None
    finally:
        monkeypatch.delenv("NEUROFLOW_KERNELS")
        kernels._compiled.cache_clear()
    assert kernels.enabled()


def test_ties_on_a_hand_built_tensor() -> None:
    x = torch.tensor([[1.0, -2.0, 0.5, 0.0], [-1.0, 3.0, 0.5, 0.0]])
    # Trimmed: [[1, -2, 0, 0], [-1, 3, 0, 0]]; sums [0, 1, 0, 0]; signs sum to 1, so the fallback
    # is +1: column 0 (mass 0, entries kept) takes the positive entry, column 2 is all trimmed.
    thresholds = [torch.tensor(0.6), torch.tensor(0.6)]
    assert torch.equal(ties_merge(x.clone(), thresholds=thresholds), torch.tensor([1.0, 3.0, 0.0, 0.0]))
    tie = TieFallback()
    assert torch.equal(ties_merge(x.clone(), thresholds=thresholds, tie=tie), torch.tensor([1.0, 3.0, 0.0, 0.0]))
    assert (tie.sign_sum, tie.assumed, tie.positions.tolist()) == (1, True, [0])  # column 2: nothing kept
    known = TieFallback(value=-1.0)
    assert torch.equal(ties_merge(x.clone(), thresholds=thresholds, tie=known), torch.tensor([-1.0, 3.0, 0.0, 0.0]))
    assert known.sign_sum == 0  # a known fallback is not accumulated again
    # A fallback of 0 keeps the negative entries, as the reference's where(sign > 0, ...) does.
    assert torch.equal(ties_merge(x.clone(), thresholds=thresholds, tie=TieFallback(value=0.0)), torch.tensor([-1.0, 3.0, 0.0, 0.0]))
    # No trim: [1 - 1, -2 + 3, 0.5 + 0.5, 0] -> signs (fallback +1) -> means 1, 3, 0.5, 0.
    assert torch.equal(ties_merge(x.clone()), torch.tensor([1.0, 3.0, 0.5, 0.0]))


def _cases(tasks: int, dtype: torch.dtype, generator: torch.Generator) -> list[tuple]:
    x = torch.randn(tasks, 300, 70, dtype=dtype, generator=generator)
    x[:, :5] = 0  # all-zero columns
    x[0, 7], x[-1, 7] = 1.0, -1.0  # exact cancellations (ambiguous when tasks == 2)
    medians = [x[t].abs().median() for t in range(tasks)]
    cases = []
    for thresholds in (None, medians, [None, *medians[1:]]):
        for tie in (None, "first", 0.0, -1.0, 1.0):
            cases.append((x, thresholds, tie))
    return cases


def _tie(value):
    return None if value is None else TieFallback(value=None if value == "first" else value)


@pytest.mark.parametrize("tasks", [1, 2, 3, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ties_kernel_matches_the_torch_steps_bit_for_bit(torch_path, tasks, dtype) -> None:
    g = torch.Generator().manual_seed(tasks)
    for x, thresholds, tie in _cases(tasks, dtype, g):
        expected_tie, got_tie = _tie(tie), _tie(tie)
        expected = torch_path(ties_merge, x.clone(), thresholds=thresholds, tie=expected_tie)
        got = ties_merge(x.clone(), thresholds=thresholds, tie=got_tie)
        assert got.dtype == dtype and got.shape == x.shape[1:]
        assert torch.equal(got, expected), (thresholds is None, tie)
        if expected_tie is not None:
            assert (got_tie.sign_sum, got_tie.assumed) == (expected_tie.sign_sum, expected_tie.assumed)
            if tie == "first":
                assert torch.equal(got_tie.positions, expected_tie.positions)
                assert (tasks == 2) <= (7 * 70 in got_tie.positions.tolist())


def test_ambiguous_positions_are_exactly_the_columns_another_fallback_changes(torch_path) -> None:
    # bfloat16-like task values cancel exactly often; the entries that differ between the -1 and
    # +1 merges are the reported positions, and merging those columns alone gives their values.
    g = torch.Generator().manual_seed(5)
    x = (torch.randint(-3, 4, (3, 3 * 2048 * 64 + 11), generator=g) * 0.25).float()
    thresholds = [torch.tensor(0.5)] * 3
    for run in (lambda f, *a, **k: f(*a, **k), torch_path):
        for count in (1, 2):
            with kernels.threads(count):
                tie = TieFallback(guess=1.0)
                plus = run(ties_merge, x.clone(), thresholds=thresholds, tie=tie)
                minus = run(ties_merge, x.clone(), thresholds=thresholds, tie=TieFallback(value=-1.0))
            changed = (plus != minus).nonzero().reshape(-1)
            assert changed.numel() > 1000 and torch.equal(tie.positions, changed)
            alone = run(ties_merge, x[:, changed].clone(), thresholds=thresholds, tie=TieFallback(value=-1.0))
            assert torch.equal(alone, minus[changed])


def test_ties_kernel_sums_tasks_in_order_for_many_tasks() -> None:
    # torch's reduction over dim 0 may regroup the sum for some widths; the kernel always adds
    # tasks in order, which this loop does by hand.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 21000, generator=g)
    limit = torch.tensor(0.7)
    kept = x * (x.abs() >= limit)
    total = kept[0].clone()
    for row in kept[1:]:
        total += row
    fallback = torch.sign(torch.sign(total).sum())
    sign = torch.where(total == 0, fallback, torch.sign(total))
    s = torch.where(sign > 0, 1.0, -1.0)
    mass, count = torch.zeros(21000), torch.zeros(21000)
    for row in kept:
        a = (row * s).clamp(min=0)
        mass += a
        count += a > 0
    expected = mass * s / count.clamp(min=1)
    assert torch.equal(ties_merge(x.clone(), thresholds=[limit] * 8), expected)


def test_float64_thresholds_compare_float32_values_exactly(torch_path) -> None:
    # float32(0.1) is above the float64 0.1, the float32 just below it is under: a threshold
    # rounded to float32 would keep both or neither.
    above = np.float32(0.1)
    below = np.nextafter(above, np.float32(0))
    x = torch.tensor([[above, -below, 0.5], [below, above, -0.5]], dtype=torch.float32)
    thresholds = [torch.tensor(0.1, dtype=torch.float64)] * 2
    got = ties_merge(x.clone(), thresholds=thresholds)
    assert torch.equal(got, torch_path(ties_merge, x.clone(), thresholds=thresholds))
    assert torch.equal(got, torch.tensor([float(above), float(above), 0.5]))


def test_threads_split_the_columns_without_changing_values() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 3 * 2048 * 64 + 7, generator=g)
    thresholds = [torch.tensor(0.9)] * 4
    with kernels.threads(1):
        one = ties_merge(x.clone(), thresholds=thresholds, tie=(tie_one := TieFallback()))
    with kernels.threads(2):
        two = ties_merge(x.clone(), thresholds=thresholds, tie=(tie_two := TieFallback()))
    assert torch.equal(one, two)
    assert (tie_one.sign_sum, tie_one.assumed) == (tie_two.sign_sum, tie_two.assumed)
    assert torch.equal(tie_one.positions, tie_two.positions)


def test_window_block_on_a_hand_built_block() -> None:
    values = torch.tensor([[3.0, -1.0, 2.0, -4.0], [0.5, 0.25, -2.5, 1.0]])
    low, high = torch.tensor([1.5, 0.3]), torch.tensor([3.0, 1.0])
    total = torch.tensor([1.0, 0.0], dtype=torch.float64)  # accumulates onto what is there
    below_count = torch.zeros(2, dtype=torch.int64)
    below_mass = torch.zeros(2, dtype=torch.float64)
    inside = torch.empty(2, 4)
    counts = kernels.window_block(values, low, high, total, below_count, below_mass, inside)
    assert counts.tolist() == [2, 2]
    assert inside[0, :2].tolist() == [3.0, 2.0] and inside[1, :2].tolist() == [0.5, 1.0]
    assert total.tolist() == [11.0, 4.25]
    assert below_count.tolist() == [1, 1] and below_mass.tolist() == [1.0, 0.25]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_window_block_keeps_every_entry_inside_in_order(dtype) -> None:
    # Rows of several 1024-entry chunks and a partial one; a narrow bracket (most 8-entry groups
    # hold no entry inside, which the kernel skips) and a run of entries inside at a group border.
    g = torch.Generator().manual_seed(11)
    values = torch.randn(3, 5 * 1024 + 300, generator=g, dtype=dtype)
    values[1, 1020:1030] = 0.8
    low, high = torch.tensor([0.79, 0.79, 0.0], dtype=dtype), torch.tensor([0.81, 0.81, 0.05], dtype=dtype)
    total = torch.zeros(3, dtype=torch.float64)
    below_count = torch.zeros(3, dtype=torch.int64)
    below_mass = torch.zeros(3, dtype=torch.float64)
    inside = torch.empty_like(values)
    counts = kernels.window_block(values, low, high, total, below_count, below_mass, inside)
    magnitude = values.abs()
    for t in range(3):
        expected = magnitude[t][(magnitude[t] >= low[t]) & (magnitude[t] <= high[t])]
        assert counts[t] == expected.numel() > 0 and torch.equal(inside[t, : counts[t]], expected)
        assert below_count[t] == int((magnitude[t] < low[t]).sum())
        assert float(below_mass[t]) == pytest.approx(float(magnitude[t][magnitude[t] < low[t]].double().sum()), rel=1e-6)
        assert float(total[t]) == pytest.approx(float(magnitude[t].double().sum()), rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_selection_with_kernels_matches_the_torch_path(torch_path, dtype) -> None:
    g = torch.Generator().manual_seed(5)
    # Heavy-tailed values, tensors of odd sizes (a tail shorter than a lane block), 3 tasks.
    tensors = [torch.randn(3, n, dtype=dtype, generator=g) ** 3 for n in (1, 1000, 1 << 18, 300_001)]
    numel = sum(t[0].numel() for t in tensors)
    for mask_rate in (0.2, 0.8, 0.99):
        expected = torch_path(streamed_trim_statistics, tensor_stream(tensors), 3, numel, mask_rate, dtype)
        got = streamed_trim_statistics(tensor_stream(tensors), 3, numel, mask_rate, dtype)
        assert got.k == expected.k
        assert all(torch.equal(a, b) for a, b in zip(got.thresholds, expected.thresholds))
        assert got.sigma == pytest.approx(expected.sigma, rel=1e-6)
        # The definition, on the concatenated magnitudes.
        flat = torch.cat([t.reshape(3, -1) for t in tensors], dim=1).abs().to(torch.float64)
        for t in range(3):
            kth = flat[t].kthvalue(got.k).values
            assert float(got.thresholds[t]) == float(kth)
            assert got.sigma[t] == pytest.approx(float(flat[t][flat[t] < kth].sum() / flat[t].sum()), rel=1e-6)


def test_kernels_that_fail_to_load_fall_back_to_the_torch_steps(monkeypatch, caplog) -> None:
    import sys

    import neuroflow.merging as package

    monkeypatch.delattr(package, "numba_loops")
    monkeypatch.setitem(sys.modules, "neuroflow.merging.numba_loops", None)  # import raises
    kernels._compiled.cache_clear()
    try:
        with caplog.at_level("WARNING"):
            assert not kernels.enabled()
        assert "using the torch steps" in caplog.text
        x = torch.tensor([[1.0, -2.0, 0.5, 0.0], [-1.0, 3.0, 0.5, 0.0]])
        assert torch.equal(ties_merge(x, thresholds=[0.6, 0.6]), torch.tensor([1.0, 3.0, 0.0, 0.0]))
    finally:
        monkeypatch.undo()
        kernels._compiled.cache_clear()
    assert kernels.enabled()


def test_jacobi_eigh_against_numpy() -> None:
    from neuroflow.merging import numba_loops

    rng = np.random.default_rng(0)
    for size in (1, 2, 4, 7):
        x = rng.standard_normal((size, size + 3))
        gram = x @ x.T
        values, vectors = np.empty(size), np.empty((size, size))
        numba_loops.jacobi_eigh(gram.copy(), values, vectors)
        np.testing.assert_allclose(np.sort(values), np.linalg.eigvalsh(gram), rtol=0, atol=1e-12 * np.abs(gram).max())
        np.testing.assert_allclose(vectors.T @ vectors, np.eye(size), atol=1e-13)
        np.testing.assert_allclose(vectors.T @ gram @ vectors, np.diag(values), atol=1e-12 * np.abs(gram).max())
    # Rank deficient (two pairs of equal rows): two eigenvalues at round-off, two as numpy's.
    x = rng.standard_normal((2, 5))
    gram = np.block([[x @ x.T, x @ x.T], [x @ x.T, x @ x.T]])
    values, vectors = np.empty(4), np.empty((4, 4))
    numba_loops.jacobi_eigh(gram.copy(), values, vectors)
    np.testing.assert_allclose(np.sort(values), np.linalg.eigvalsh(gram), atol=1e-12 * np.abs(gram).max())


def test_neuron_merge_on_a_hand_built_neuron() -> None:
    from neuroflow.merging.neuromerging import _EIG_RTOL

    # w0 = e0. Task rows [s, a] (parallel s, orthogonal a): [1, 2] and [3, -1]; the orthogonal
    # parts 2 and -1 are one component (u = +-(2, -1) / sqrt 5): the elected sign keeps the task
    # with coordinate sign of the sum; psi_orth = A^T (U m) = mean of the agreeing orthogonal rows
    # restricted to that component = [0, 2] (task 0 alone agrees). s = [1, 3].
    w0 = torch.tensor([[1.0, 0.0]])
    rows = torch.tensor([[[1.0, 2.0]], [[3.0, -1.0]]])
    s, psi = kernels.neuron_merge(w0, rows, [None, None], _EIG_RTOL)
    assert torch.allclose(s, torch.tensor([[1.0], [3.0]]))
    assert torch.allclose(psi, torch.tensor([[0.0, 2.0]]), atol=1e-6)
    # Trimming task 0's |1| < 1.5 entry and task 1's |-1| < 1.5 entry: rows [0, 2] and [3, 0].
    s, psi = kernels.neuron_merge(w0, rows, [torch.tensor(1.5), torch.tensor(1.5)], _EIG_RTOL)
    assert torch.allclose(s, torch.tensor([[0.0], [3.0]]))
    assert torch.allclose(psi, torch.tensor([[0.0, 2.0]]), atol=1e-6)
    assert torch.equal(rows, torch.tensor([[[1.0, 2.0]], [[3.0, -1.0]]]))  # inputs untouched


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(4, 300, 64), (3, 40, 2), (6, 20, 17), (1, 5, 3)])
def test_neuron_merge_matches_the_torch_path(torch_path, dtype, shape) -> None:
    from neuroflow.merging.neuromerging import _EIG_RTOL, merge_orthogonal
    from neuroflow.merging.steps import trim_tasks_

    tasks, rows, width = shape
    g = torch.Generator().manual_seed(11)
    w0 = torch.randn(rows, width, dtype=dtype, generator=g)
    x = torch.randn(tasks, rows, width, dtype=dtype, generator=g) * 0.1
    w0[1] = 0  # no parallel direction
    x[0, 2] = 0  # a zero task row
    if tasks > 1:
        x[1, 3] = x[0, 3]  # duplicate experts: a rank-deficient Gram matrix
    thresholds = [x[t].abs().median() for t in range(tasks - 1)] + [None]
    s, psi = kernels.neuron_merge(w0, x, thresholds, _EIG_RTOL)
    s_ref, psi_ref = torch_path(merge_orthogonal, w0, trim_tasks_(x.clone(), thresholds))
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    assert torch.allclose(s, s_ref, rtol=tol, atol=tol * s_ref.abs().max())
    assert torch.allclose(psi, psi_ref, rtol=tol, atol=tol * psi_ref.abs().max())


def test_neuron_merge_splits_rows_over_threads() -> None:
    from neuroflow.merging.neuromerging import _EIG_RTOL

    g = torch.Generator().manual_seed(3)
    w0, x = torch.randn(512, 600, generator=g), torch.randn(4, 512, 600, generator=g)
    with kernels.threads(1):
        one = kernels.neuron_merge(w0, x, [None] * 4, _EIG_RTOL)
    with kernels.threads(2):
        two = kernels.neuron_merge(w0, x, [None] * 4, _EIG_RTOL)
    assert all(torch.equal(a, b) for a, b in zip(one, two))  # each neuron on one thread: same values


def test_difference_into_matches_torch_and_checks_finiteness() -> None:
    g = torch.Generator().manual_seed(3)
    stored = torch.randn(3001, generator=g).to(torch.bfloat16)  # odd length: the loop's tail too
    base = (stored.float() + 0.01 * torch.randn(3001, generator=g)).to(torch.bfloat16)
    out = torch.empty(3001)
    assert kernels.difference_into(out, stored, base) is True
    assert torch.equal(out, stored.float() - base.float())
    # Hand-checked values: 1.5 - 0.25 and -2 - 2 are exact in float32.
    small = torch.empty(2)
    assert kernels.difference_into(small, torch.tensor([1.5, -2.0]).bfloat16(), torch.tensor([0.25, 2.0]).bfloat16())
    assert small.tolist() == [1.25, -4.0]
    for bad in (float("nan"), float("inf"), float("-inf")):
        dirty = stored.clone()
        dirty[1234] = bad
        assert kernels.difference_into(out, dirty, base) is False
    # Finite inputs whose difference overflows float32 are not finite either.
    huge = torch.tensor([3.0e38]).bfloat16()
    assert kernels.difference_into(torch.empty(1), huge, -huge) is False


def test_difference_into_declines_what_it_does_not_handle() -> None:
    bf = torch.ones(4, dtype=torch.bfloat16)
    assert kernels.difference_into(torch.empty(4), bf.float(), bf) is None  # float32 stored
    assert kernels.difference_into(torch.empty(4, dtype=torch.float64), bf, bf) is None
    assert kernels.difference_into(torch.empty(4), torch.ones(8, dtype=torch.bfloat16)[::2], bf) is None  # strided
    assert kernels.difference_into(torch.empty(3), bf, bf) is None  # shape


@pytest.mark.parametrize("compiled", [True, False], ids=["kernel", "torch"])
def test_a_first_pass_guessing_minus_one_merges_as_the_known_minus_one(monkeypatch, compiled: bool) -> None:
    x = torch.tensor([[1.0, -2.0, 0.5, 0.0], [-1.0, 3.0, 0.5, 0.0]])  # column 0 cancels after the trim
    thresholds = [torch.tensor(0.6), torch.tensor(0.6)]
    if not compiled:
        monkeypatch.setenv("NEUROFLOW_KERNELS", "0")
    kernels._compiled.cache_clear()
    try:
        guessed = TieFallback(guess=-1.0)
        got = ties_merge(x.clone(), thresholds=thresholds, tie=guessed)
        assert torch.equal(got, ties_merge(x.clone(), thresholds=thresholds, tie=TieFallback(value=-1.0)))
        assert torch.equal(got, torch.tensor([-1.0, 3.0, 0.0, 0.0]))
        assert (guessed.sign_sum, guessed.assumed) == (1, True)  # the column is flagged under -1 too
    finally:
        monkeypatch.delenv("NEUROFLOW_KERNELS", raising=False)
        kernels._compiled.cache_clear()
    with pytest.raises(ValueError, match="guess must be"):
        TieFallback(guess=0.0)


def test_a_block_without_columns_reports_no_positions(torch_path) -> None:
    for run in (lambda f, *a, **k: f(*a, **k), torch_path):
        tie = TieFallback()
        got = run(ties_merge, torch.empty(2, 0), thresholds=[torch.tensor(0.5)] * 2, tie=tie)
        assert got.shape == (0,) and not tie.assumed and tie.positions.tolist() == []
