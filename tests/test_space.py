"""LevelSpace: validation, feasibility, repair, sampling and the level-switch mutation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from levelsearch import LevelSpace


def test_exact_budget_on_levels_is_feasible_only_at_the_total():
    space = LevelSpace(2, n_units=6, total=2)
    assert space.is_feasible([1, 1, 0, 0, 0, 0])
    assert not space.is_feasible([1, 0, 0, 0, 0, 0])
    assert not space.is_feasible([1, 1, 1, 0, 0, 0])


def test_band_budget_accepts_every_total_inside_the_band():
    space = LevelSpace(3, n_units=4, total=6, tol=2)
    assert space.is_feasible([1, 1, 1, 1])  # 4
    assert space.is_feasible([2, 2, 1, 1])  # 6
    assert not space.is_feasible([1, 1, 1, 0])  # 3
    assert not space.is_feasible([2, 2, 2, 1])  # 7


def test_budget_outside_reachable_range_names_the_range():
    with pytest.raises(ValueError, match=r"reachable range \[0, 4\]"):
        LevelSpace(2, n_units=4, total=9)
    with pytest.raises(ValueError, match="reachable range"):
        LevelSpace(2, n_units=4, total=-1)


def test_exact_total_between_reachable_totals_is_refused():
    # steps cost 2, so only even totals exist
    with pytest.raises(ValueError, match="not one of them"):
        LevelSpace([3, 3], costs=[[0, 2, 4], [0, 2, 4]], total=3)
    # unequal steps: 3 is inside [0, 9] but no assignment reaches it
    with pytest.raises(ValueError, match="not every value"):
        LevelSpace([3, 3], costs=[[0, 2, 5], [0, 2, 4]], total=3)


def test_band_that_holds_no_reachable_total_is_refused():
    # unit 1 costs 0 or 3: the band [1, 2] lies inside the range [0, 3] yet holds no reachable total
    with pytest.raises(ValueError, match=r"none lies in \[1, 2\]"):
        LevelSpace(2, n_units=2, costs=[[0, 1], [0, 3]], total={0: 0, 1: 2}, groups=[0, 1], tol=1)
    with pytest.raises(ValueError, match="not every value"):
        LevelSpace([3, 3], costs=[[0, 4, 9], [0, 4, 9]], total=7, tol=2)
    with pytest.raises(ValueError, match="none lies in"):
        LevelSpace([3, 3], costs=[[0, 4, 8], [0, 4, 8]], total=7, tol=2)
    LevelSpace([3, 3], costs=[[0, 4, 8], [0, 4, 8]], total=7, tol=3)  # 4 is in [4, 7]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_levels": 2}, "give n_units"),
        ({"n_levels": 0, "n_units": 3}, "at least one level"),
        ({"n_levels": [2, 2], "n_units": 3}, "n_units=3"),
        ({"n_levels": 2, "n_units": 2, "costs": [[0, 1]]}, "one row per unit"),
        ({"n_levels": 2, "n_units": 2, "total": "a"}, "must be a number"),
        ({"n_levels": 2, "n_units": 2, "total": {"a": 1}}, "no groups were given"),
        ({"n_levels": 2, "n_units": 2, "groups": ["a", "b"], "total": {"a": 1}}, "no budget for group 'b'"),
        ({"n_levels": 2, "n_units": 2, "groups": ["a"], "total": 1}, "one label per unit"),
        ({"n_levels": 2, "n_units": 3, "groups": {"a": [0], "b": [0, 1, 2]}, "total": 1}, "two groups"),
        ({"n_levels": 2, "n_units": 2, "total": 1, "tol": -1}, "tol must be >= 0"),
    ],
)
def test_malformed_arguments_raise_a_clear_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LevelSpace(**kwargs)


def test_group_budgets_hold_separately():
    space = LevelSpace(2, n_units=6, groups=["attn", "mlp"] * 3, total=1)
    assert space.is_feasible([1, 1, 0, 0, 0, 0])
    assert not space.is_feasible([1, 0, 1, 0, 0, 0])  # two attention, no MLP
    assert space.group_bounds() == {"attn": (1.0, 1.0), "mlp": (1.0, 1.0)}


def test_uniform_is_returned_when_it_meets_the_budget_and_none_otherwise():
    assert LevelSpace(4, n_units=5, total=10).uniform().tolist() == [2] * 5
    assert LevelSpace(2, n_units=5, total=2).uniform() is None


def test_validate_rejects_out_of_range_levels_with_the_unit_named():
    space = LevelSpace(3, n_units=3)
    with pytest.raises(ValueError, match="unit 1 has level 5"):
        space.validate([0, 5, 0])
    with pytest.raises(ValueError, match="3 levels"):
        space.validate([0, 1])


def test_repair_with_costs_without_a_common_step_reaches_the_band_where_local_moves_get_stuck():
    # from [0, 0, 1] (total pi, over the band) the only lowering move lands under it: two units must change
    space = LevelSpace(2, n_units=3, total=2.5, costs=[[0, 1], [0, np.sqrt(2)], [0, np.pi]], tol=1.2)
    rng = np.random.default_rng(0)
    assert space.repair(np.array([0, 0, 1]), rng).tolist() == [0, 1, 0]  # the fewest changed units
    assert all(space.is_feasible(space.sample(rng)) for _ in range(50))


def test_repair_with_unequal_costs_finds_an_exact_total():
    costs = [[0, 3, 7], [0, 2, 5], [0, 4, 9], [0, 1, 6]]
    space = LevelSpace([3, 3, 3, 3], costs=costs, total=12)
    rng = np.random.default_rng(0)
    for _ in range(50):
        x = space.repair(rng.integers(0, 3, size=4), rng)
        assert space.cost(x) == 12


def test_enumerate_feasible_lists_exactly_the_feasible_points():
    space = LevelSpace(2, n_units=5, total=2)
    pts = space.enumerate_feasible()
    assert len(pts) == 10
    assert all(space.is_feasible(p) for p in pts)


# ------------------------------------------------------------- properties
@st.composite
def spaces(draw):
    n = draw(st.integers(2, 12))
    k = draw(st.integers(2, 5))
    grouped = draw(st.booleans())
    band = draw(st.booleans())
    unequal = draw(st.booleans())
    if unequal:
        sizes = draw(st.lists(st.integers(1, 4), min_size=n, max_size=n))
        costs = [[s * lv for lv in range(k)] for s in sizes]
    else:
        costs = None
    groups = [i % 2 for i in range(n)] if grouped else None
    units_per_group = [list(range(g, n, 2)) for g in (0, 1)] if grouped else [list(range(n))]
    totals = []
    for us in units_per_group:
        hi = sum((costs[i][k - 1] if costs else k - 1) for i in us)
        totals.append(draw(st.integers(0, hi)))
    tol = draw(st.integers(0, 4)) if band or unequal else 0
    total = {0: totals[0], 1: totals[1]} if grouped else totals[0]
    try:
        return LevelSpace(k, n_units=n, total=total, costs=costs, groups=groups, tol=tol)
    except ValueError:
        # an unreachable exact total: fall back to a band wide enough to be reachable
        return LevelSpace(k, n_units=n, total=total, costs=costs, groups=groups, tol=max(tol, 4))


@settings(max_examples=60, deadline=None)
@given(space=spaces(), seed=st.integers(0, 2**16))
def test_every_sample_is_feasible(space, seed):
    rng = np.random.default_rng(seed)
    for _ in range(5):
        assert space.is_feasible(space.sample(rng))


@settings(max_examples=60, deadline=None)
@given(space=spaces(), seed=st.integers(0, 2**16), switches=st.integers(1, 4))
def test_every_switch_offspring_is_feasible(space, seed, switches):
    rng = np.random.default_rng(seed)
    x = space.sample(rng)
    for _ in range(10):
        child = space.switch(x, rng, switches)
        assert space.is_feasible(child)
        x = child


@settings(max_examples=60, deadline=None)
@given(space=spaces(), seed=st.integers(0, 2**16))
def test_repair_of_any_assignment_is_feasible(space, seed):
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, space.n_levels)
    assert space.is_feasible(space.repair(raw, rng))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_switch_keeps_an_exact_level_sum_and_changes_two_units(seed):
    space = LevelSpace(4, n_units=20, total=25)
    rng = np.random.default_rng(seed)
    x = space.sample(rng)
    child = space.switch(x, rng, 1)
    assert child.sum() == 25
    assert int((child != x).sum()) == 2
