"""minimize_curve: many budgets, each started from the previous result repaired to it, resumable."""

from __future__ import annotations

import numpy as np
import pytest

from levelsearch import LevelSpace, minimize, minimize_curve
from levelsearch.curve import check_budgets, space_at

ERRORS = np.linspace(0.1, 2.0, 12)
SPACE = LevelSpace(4, n_units=12, total=12)  # levels 0..3, the budget bounds the sum of levels


CALLS = {"n": 0, "limit": None}  # a limit makes fitness raise KeyboardInterrupt past that many calls (Ctrl-C)


def fitness(lv):
    CALLS["n"] += 1
    if CALLS["limit"] is not None and CALLS["n"] > CALLS["limit"]:
        raise KeyboardInterrupt
    return float(ERRORS @ (3 - np.asarray(lv)) ** 2)


def _curve(**kw):
    return minimize_curve(fitness, SPACE, [10, 14, 18], max_evaluations=300, seed=2, **kw)


def test_every_point_meets_its_own_budget_and_improves_on_its_start():
    curve = _curve()
    assert curve.budgets == [10.0, 14.0, 18.0]
    for p in curve.points:
        assert int(np.sum(p.best_levels)) == p.budget
    assert curve.best_values == sorted(curve.best_values, reverse=True)  # more budget, lower error
    for p in curve.points[1:]:
        assert p.start == "neighbour"
        assert p.best_value <= fitness(p.start_levels)
    assert curve.n_evaluations == sum(p.result.n_evaluations for p in curve.points)


def test_a_later_budget_starts_from_the_previous_best_moved_by_the_fewest_level_steps():
    curve = _curve()
    for prev, p in zip(curve.points, curve.points[1:]):
        assert int(p.start_levels.sum()) == p.budget
        steps = np.abs(p.start_levels - prev.best_levels).sum()
        assert steps == p.budget - prev.budget  # only raised levels: a repair, not a new sample
        assert (p.start_levels >= prev.best_levels).all()


def test_the_first_budget_is_the_plain_search():
    curve = _curve()
    alone = minimize(fitness, space_at(SPACE, 10), max_evaluations=300, seed=2)
    assert curve.points[0].start == "default"
    assert curve.points[0].best_levels.tolist() == alone.best_levels.tolist()
    assert curve.points[0].best_value == alone.best_value


def test_a_curve_stopped_during_a_budget_resumes_to_the_uninterrupted_curve(tmp_path):
    full = _curve()
    CALLS.update(n=0, limit=full.points[0].result.n_evaluations + 40)  # inside the second budget's search
    try:
        first = _curve(journal=tmp_path / "j")
    finally:
        CALLS["limit"] = None
    assert len(first.points) == 2 and first.points[-1].result.stopped_by == "interrupted"
    resumed = _curve(journal=tmp_path / "j")
    assert resumed.points[0].result.n_replayed == resumed.points[0].result.n_evaluations
    assert resumed.points[1].result.n_replayed > 0
    for a, b in zip(full.points, resumed.points):
        assert a.best_levels.tolist() == b.best_levels.tolist() and a.best_value == b.best_value
        assert [e.value for e in a.result.history] == [e.value for e in b.result.history]
    assert sorted(p.name for p in (tmp_path / "j").iterdir() if p.suffix == ".db") == [
        "budget-10.db",
        "budget-14.db",
        "budget-18.db",
    ]


@pytest.mark.parametrize(
    ("budgets", "message"),
    [
        ([], "empty"),
        ([3, 2], "2 comes after 3"),
        ([2, 2.0], "2 is given twice"),
        ([1, float("nan")], "nan is not a finite number"),
        ("3,4", "must be a list"),
    ],
)
def test_bad_budget_lists_are_one_line_naming_the_value(budgets, message):
    with pytest.raises(ValueError, match=message):
        check_budgets(budgets)
    with pytest.raises(ValueError, match=message):
        minimize_curve(fitness, SPACE, budgets, max_evaluations=10)


def test_a_budget_out_of_reach_names_the_reachable_range():
    with pytest.raises(ValueError, match=r"reachable range \[0, 36\]"):
        minimize_curve(fitness, SPACE, [10, 40], max_evaluations=10)


def test_space_at_keeps_groups_costs_and_band():
    sp = LevelSpace(3, n_units=4, total={"a": 2, "b": 2}, groups=["a", "a", "b", "b"], costs=[[0, 1, 3]] * 4, tol=1)
    moved = space_at(sp, {"a": 3, "b": 4})
    assert moved.group_labels == ["a", "b"] and moved.tol == 1
    np.testing.assert_array_equal(moved.costs, sp.costs)
    assert moved.is_feasible([1, 1, 2, 0]) and not moved.is_feasible([0, 0, 0, 0])
