"""Sign-conflict counts, the mass lost to the sign election, and mask overlap, on known cases."""

import math

import pytest
import torch

from neuroflow.analysis import election_loss, jaccard, mask_counts, sign_counts
from neuroflow.analysis import conflicts, masks


def test_opposite_signs_conflict_everywhere():
    v = torch.tensor([0.5, -1.0, 2.0, -3.0])
    counts = sign_counts(torch.stack([v, -v]))
    assert counts.overlap == counts.conflicts == 4
    assert counts.task_overlap.tolist() == counts.task_conflicts.tolist() == [4, 4]
    assert counts.pair_opposite[0, 1] == counts.pair_both[0, 1] == 4


def test_same_signs_never_conflict():
    v = torch.tensor([0.5, -1.0, 2.0])
    counts = sign_counts(torch.stack([v, 3 * v]))
    assert (counts.overlap, counts.conflicts) == (3, 0)
    assert counts.task_conflicts.tolist() == [0, 0] and counts.pair_opposite[0, 1] == 0


def test_hand_counted_three_tasks():
    # entry 0: +,+,0 (agree); 1: 0,-,+ (conflict); 2: +,0,0 (one task only); 3: -,+,+ (conflict)
    x = torch.tensor([[1.0, 0.0, 2.0, -1.0], [1.0, -1.0, 0.0, 1.0], [0.0, 1.0, 0.0, 1.0]])
    counts = sign_counts(x)
    assert (counts.overlap, counts.conflicts) == (3, 2)
    assert counts.task_overlap.tolist() == [2, 3, 2]
    assert counts.task_conflicts.tolist() == [1, 2, 2]
    assert counts.pair_both.tolist() == [[3, 2, 1], [2, 3, 2], [1, 2, 2]]
    assert counts.pair_opposite.tolist() == [[0, 1, 1], [1, 0, 1], [1, 1, 0]]


def test_counts_add_up_across_chunks(monkeypatch):
    x = torch.randn(3, 1000, generator=torch.Generator().manual_seed(0)) * (torch.rand(3, 1000) > 0.5)
    whole = sign_counts(x)
    monkeypatch.setattr(conflicts, "_CHUNK", 37)
    chunked = sign_counts(x)
    assert (whole.overlap, whole.conflicts) == (chunked.overlap, chunked.conflicts)
    for name in ("task_overlap", "task_conflicts", "pair_both", "pair_opposite"):
        assert torch.equal(getattr(whole, name), getattr(chunked, name))


def test_election_loss_by_hand():
    # entry 0: 1 + (-3) < 0 elects "-": task 0 loses its 1; entry 1: 2 + 1 > 0, both agree.
    lost, kept = election_loss(torch.tensor([[1.0, 2.0], [-3.0, 1.0]]))
    assert lost.tolist() == [1.0, 0.0] and kept.tolist() == [3.0, 4.0]


def test_election_tie_follows_the_disjoint_mean_rule():
    # Every entry's sum is 0 and the fallback is 0 too: the disjoint mean keeps only negatives.
    lost, kept = election_loss(torch.tensor([[1.0, -2.0], [-1.0, 2.0]]))
    assert lost.tolist() == [1.0, 2.0] and kept.tolist() == [3.0, 3.0]


def test_identical_masks_have_jaccard_one_and_disjoint_zero():
    a = torch.tensor([1.0, 0.0, -2.0, 0.0])
    support, inter = mask_counts(torch.stack([a, 5 * a, torch.tensor([0.0, 1.0, 0.0, 1.0])]))
    j = jaccard(support, inter)
    assert j[0, 1].item() == 1.0 and j[0, 2].item() == 0.0 and j[2, 2].item() == 1.0
    assert support.tolist() == [2, 2, 2]


def test_jaccard_hand_case_and_empty_masks():
    support, inter = mask_counts(torch.tensor([[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]))
    j = jaccard(support, inter)
    assert j[0, 1].item() == pytest.approx(2 / 4)
    assert math.isnan(j[2, 2].item()) and j[0, 2].item() == 0.0


def test_mask_counts_across_chunks(monkeypatch):
    x = torch.randn(2, 999, generator=torch.Generator().manual_seed(1)) * (torch.rand(2, 999) > 0.7)
    whole = mask_counts(x)
    monkeypatch.setattr(masks, "_CHUNK", 10)
    for a, b in zip(whole, mask_counts(x)):
        assert torch.equal(a, b)
