"""Multi-task mixing modes and per-rank sharding, on index level."""

from collections import Counter

import numpy as np
import pytest

from neuroflow.data.samplers import MultiTaskBatchSampler, ShardSampler


def keys_by_task(batches):
    out = {}
    for batch in batches:
        tasks = {t for t, _ in batch}
        assert len(tasks) == 1, "a batch mixes tasks"
        out.setdefault(tasks.pop(), []).extend(r for _, r in batch)
    return out


def test_proportional_sees_every_example_once_in_random_task_order():
    s = MultiTaskBatchSampler([100, 30], batch_size=10, sampling="proportional", seed=0)
    batches = list(s)
    assert len(batches) == len(s) == 13
    assert Counter(b[0][0] for b in batches) == {0: 10, 1: 3}
    rows = keys_by_task(batches)
    assert sorted(rows[0]) == list(range(100)) and sorted(rows[1]) == list(range(30))
    order = [b[0][0] for b in batches]
    assert order != sorted(order)  # interleaved, not task after task


def test_epochs_reshuffle_and_are_reproducible():
    s = MultiTaskBatchSampler([50, 20], batch_size=5, seed=1)
    s.set_epoch(0)
    e0 = list(s)
    s.set_epoch(1)
    e1 = list(s)
    s.set_epoch(0)
    assert list(s) == e0 and e1 != e0
    # Outside Lightning (no set_epoch), each new iteration is a new epoch.
    plain = MultiTaskBatchSampler([50, 20], batch_size=5, seed=1)
    assert list(plain) == e0 and list(plain) == e1


def test_round_robin_alternates_and_restarts_small_tasks():
    s = MultiTaskBatchSampler([100, 30, 50], batch_size=10, sampling="round_robin", seed=0)
    batches = list(s)
    assert len(batches) == len(s) == 30
    assert [b[0][0] for b in batches] == [0, 1, 2] * 10
    rows = keys_by_task(batches)
    assert sorted(rows[0]) == list(range(100))
    assert Counter(rows[1]) == Counter(list(range(30)) * 3 + rows[1][90:])  # 3 full passes, then more
    assert len(rows[1]) == 100 and set(rows[1]) == set(range(30))
    assert sorted(rows[2]) == sorted(list(range(50)) * 2)


def test_temperature_follows_size_to_the_power_one_over_t():
    s = MultiTaskBatchSampler([900, 100], batch_size=10, sampling="temperature", temperature=2.0, seed=0)
    np.testing.assert_allclose(s.task_probabilities(), [0.75, 0.25])
    assert len(s) == 100
    steps = []
    for epoch in range(30):
        s.set_epoch(epoch)
        steps += [b[0][0] for b in s]
    share = steps.count(1) / len(steps)
    assert abs(share - 0.25) < 0.03, share
    flat = MultiTaskBatchSampler([900, 100], batch_size=10, sampling="temperature", temperature=1e6)
    np.testing.assert_allclose(flat.task_probabilities(), [0.5, 0.5], atol=1e-4)
    # A small task restarts when it runs out: more than 100 draws of task 1 reuse its rows.
    assert all(0 <= r < 100 for b in s for t, r in b if t == 1)


@pytest.mark.parametrize("sampling", ["proportional", "round_robin", "temperature"])
def test_ranks_share_the_schedule_and_get_disjoint_slices(sampling):
    sizes, bs = [53, 21], 4
    ranks = [MultiTaskBatchSampler(sizes, bs, sampling, seed=3, rank=r, world_size=2) for r in range(2)]
    for r in ranks:
        r.set_epoch(2)
    b0, b1 = list(ranks[0]), list(ranks[1])
    assert len(b0) == len(b1) == len(ranks[0])
    for x, y in zip(b0, b1):
        assert x[0][0] == y[0][0]  # same task at the same step
        assert not {k for k in x} & {k for k in y}
        assert len(x) >= 1 and len(y) >= 1
    if sampling == "proportional":
        # Together the two ranks see every example once (53 = 6 global batches of 8 + 5 left;
        # the last one is split 3/2).
        both = keys_by_task(b0 + b1)
        assert sorted(both[0]) == list(range(53)) and sorted(both[1]) == list(range(21))
    assert b0 != b1


def test_drop_last_and_tail_smaller_than_world():
    assert len(MultiTaskBatchSampler([25], 10, drop_last=True)) == 2
    assert len(MultiTaskBatchSampler([25], 10)) == 3
    # 4 processes x 4 = 16 per global batch; 17 leaves 1 < 4 examples: that tail is dropped.
    assert len(MultiTaskBatchSampler([17], 4, world_size=4)) == 1
    with pytest.raises(ValueError, match="too few training examples"):
        MultiTaskBatchSampler([10, 2], 4, world_size=4)
    with pytest.raises(ValueError, match="sampling 'random'"):
        MultiTaskBatchSampler([10], 4, sampling="random")


def test_shard_sampler_partitions_without_padding():
    for size, world in [(10, 3), (2, 3), (7, 1), (0, 2)]:
        shards = [list(ShardSampler(size, r, world)) for r in range(world)]
        flat = [i for s in shards for i in s]
        assert sorted(flat) == list(range(size)) and len(flat) == len(set(flat))
        assert [len(ShardSampler(size, r, world)) for r in range(world)] == [len(s) for s in shards]
