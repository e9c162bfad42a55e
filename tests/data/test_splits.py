import numpy as np

from neuroflow.data.splits import cap_indices, carve_splits, stratified_order


def test_every_prefix_of_the_stratified_order_is_within_one_per_class():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 20)
    order = stratified_order(labels, seed=3)
    assert sorted(order.tolist()) == list(range(100))
    for k in range(1, 101):
        counts = np.bincount(labels[order[:k]], minlength=3)
        expected = k * np.array([0.5, 0.3, 0.2])
        assert np.all(np.abs(counts - expected) < 1.0 + 1e-9), (k, counts, expected)


def test_stratified_order_is_seeded():
    labels = np.arange(40) % 4
    assert np.array_equal(stratified_order(labels, 1), stratified_order(labels, 1))
    assert not np.array_equal(stratified_order(labels, 1), stratified_order(labels, 2))


def test_carve_splits_sizes_are_disjoint_and_cover_the_pool():
    labels = np.array([0] * 70 + [1] * 30)
    rest, made = carve_splits(labels, {"validation": 0.1, "test": 0.2}, seed=0)
    assert len(made["validation"]) == 10 and len(made["test"]) == 20 and len(rest) == 70
    together = np.concatenate([rest, made["validation"], made["test"]])
    assert sorted(together.tolist()) == list(range(100))
    assert np.bincount(labels[made["validation"]]).tolist() == [7, 3]
    assert np.bincount(labels[made["test"]]).tolist() == [14, 6]
    assert all(np.all(np.diff(ix) > 0) for ix in [rest, *made.values()])


def test_cap_indices():
    labels = np.array([0] * 90 + [1] * 10)
    assert cap_indices(labels, None, 0) is None
    assert cap_indices(labels, 100, 0) is None
    idx = cap_indices(labels, 20, 0)
    assert len(idx) == 20 and np.bincount(labels[idx]).tolist() == [18, 2]
    assert np.array_equal(idx, cap_indices(labels, 20, 0))
