import math

import pytest

from neuroflow.merging.search import check_search_keys, expand_grid, grid_search, with_params


class Method:
    def __init__(self, mask_rate: float = 0.8, scaling: float = 1.0) -> None:
        self.mask_rate = mask_rate
        self.scaling = scaling


def test_expand_grid_order_and_errors():
    grid = expand_grid({"a": [1, 2], "b": ["x", "y", "z"]})
    assert len(grid) == 6
    assert grid[0] == {"a": 1, "b": "x"} and grid[1] == {"a": 1, "b": "y"} and grid[-1] == {"a": 2, "b": "z"}
    with pytest.raises(ValueError, match="'b' must be a non-empty list"):
        expand_grid({"a": [1], "b": []})
    with pytest.raises(ValueError, match="'a' must be a non-empty list"):
        expand_grid({"a": "0.5"})
    with pytest.raises(ValueError, match="empty"):
        expand_grid({})


def test_check_keys_and_with_params():
    m = Method(mask_rate=0.9)
    check_search_keys(m, {"scaling": [1]})
    with pytest.raises(ValueError, match=r"\['lambda_3'\].*Method.*mask_rate"):
        check_search_keys(m, {"lambda_3": [1]})
    m2 = with_params(m, {"scaling": 0.5})
    assert (m2.mask_rate, m2.scaling) == (0.9, 0.5) and m.scaling == 1.0


def test_grid_search_picks_best_average_normalized_not_best_raw():
    reference = {"a": 0.5, "b": 1.0}
    table = {
        # raw mean 0.55, normalized mean (0.2/0.5 + 0.9)/2 = 0.65
        0: {"a": 0.2, "b": 0.9},
        # raw mean 0.45, normalized mean (0.4/0.5 + 0.5)/2 = 0.65 -> tie: earlier wins
        1: {"a": 0.4, "b": 0.5},
        # raw mean 0.5, normalized mean (0.45/0.5 + 0.55)/2 = 0.725 -> best
        2: {"a": 0.45, "b": 0.55},
        3: {"a": float("nan"), "b": 1.0},
    }
    seen = []
    result = grid_search(
        [{"k": i} for i in range(4)], lambda p: table[p["k"]], reference, on_candidate=lambda i, r: seen.append(i)
    )
    assert seen == [0, 1, 2, 3]
    assert result.best_index == 2 and result.best["params"] == {"k": 2}
    assert result.candidates[0]["score"] == pytest.approx(0.65)
    assert result.candidates[2]["normalized"]["a"] == pytest.approx(0.9)
    assert math.isnan(result.candidates[3]["score"])
    tie = grid_search([{"k": 0}, {"k": 1}], lambda p: table[p["k"]], reference)
    assert tie.best_index == 0


def test_grid_search_needs_reference():
    with pytest.raises(ValueError, match="task 'b'"):
        grid_search([{}], lambda p: {"a": 0.5, "b": 0.5}, {"a": 0.5})


def test_grid_search_leaves_out_tasks_whose_expert_scores_zero():
    # b's expert has MCC 0 (a constant predictor): the ranking uses a alone, with a warning.
    table = {0: {"a": 0.4, "b": 0.9}, 1: {"a": 0.5, "b": 0.1}}
    with pytest.warns(UserWarning, match="task 'b' is left out"):
        result = grid_search([{"k": 0}, {"k": 1}], lambda p: table[p["k"]], {"a": 0.5, "b": 0.0})
    assert result.best_index == 1
    assert result.candidates[1]["score"] == pytest.approx(1.0)
    assert result.candidates[0]["excluded"] == ["b"] and "b" not in result.candidates[0]["normalized"]
    with pytest.raises(ValueError, match="no task has an expert validation metric > 0"):
        grid_search([{}], lambda p: {"b": 0.5}, {"b": 0.0})
