"""Tied units: a :class:`~levelsearch.ties.TiedSpace` searched by every optimizer, baseline and the surrogate.

Properties over random member spaces and ties (hypothesis): every assignment any registered optimizer (EvoPress
with its surrogate, the baselines) proposes expands to member levels that keep every tie and meet the member
budget; expand and reduce are inverse; a tie joining two budget groups merges their budgets.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import levelsearch
from levelsearch import LevelSpace, minimize
from levelsearch.ties import TiedSpace, member_levels

OPTIMIZERS = levelsearch.available_optimizers()
SETTINGS = settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def tied_spaces(draw: st.DrawFn) -> TiedSpace:
    """A band-budget member space of 4-8 units (2-4 levels, increasing costs), random ties over it (3+ groups)."""
    n = draw(st.integers(4, 8))
    k = draw(st.integers(2, 4))
    steps = draw(st.lists(st.lists(st.integers(1, 5), min_size=k - 1, max_size=k - 1), min_size=n, max_size=n))
    costs = [np.concatenate([[0], np.cumsum(s)]).tolist() for s in steps]
    labels = draw(st.lists(st.integers(0, n - 1), min_size=n, max_size=n))
    free = LevelSpace(k, n_units=n, costs=costs)
    probe = TiedSpace(free, labels)
    assume(probe.n_units >= 3)  # nevergrad's CMA needs fcmaes below that
    pick = np.array(draw(st.lists(st.integers(0, k - 1), min_size=probe.n_units, max_size=probe.n_units)))
    total = float(free.cost(probe.expand(pick)))
    members = LevelSpace(k, n_units=n, costs=costs, total=total, tol=float(draw(st.integers(0, 3))))
    return TiedSpace(members, labels)


def _keeps(space: TiedSpace, levels: np.ndarray) -> None:
    members = space.expand(levels)
    for group in space.group_members:
        assert len(set(members[group].tolist())) == 1, (group, members)
    assert space.members.is_feasible(members), (levels, members)


#: optimizers cheap enough to run on every drawn space; the others run on one fixed tied space
CHEAP = [n for n in OPTIMIZERS if n in ("dp", "evopress", "greedy", "random")]


def _search(name: str, space: TiedSpace, evaluations: int) -> None:
    weights = np.random.default_rng(0).uniform(0.1, 1.0, size=(space.n_members, 4))

    def fn(levels: np.ndarray) -> float:
        _keeps(space, levels)
        members = space.expand(levels)
        return float(weights[np.arange(space.n_members), members].sum())

    options = {"offspring": 4, "surrogate": True} if name == "evopress" else {}
    res = minimize(fn, space, optimizer=name, max_evaluations=evaluations, seed=0, options=options)
    _keeps(space, res.best_levels)


@pytest.mark.parametrize("name", CHEAP)
@SETTINGS
@given(space=tied_spaces())
def test_every_proposal_keeps_the_ties_and_the_member_budget(name, space):
    _search(name, space, 12)


@pytest.mark.parametrize("name", [n for n in OPTIMIZERS if n not in CHEAP])
def test_every_other_optimizer_keeps_the_ties_and_the_member_budget(name):
    costs = [[0, 1, 3], [0, 2, 4], [0, 1, 2], [0, 3, 5], [0, 1, 4], [0, 2, 3], [0, 1, 1.5], [0, 2, 2.5]]
    members = LevelSpace(3, n_units=8, costs=costs, total=12.0, tol=3.0)
    _search(name, TiedSpace(members, ["a", "b", "a", "c", "d", "c", "e", "f"]), 6)


@SETTINGS
@given(space=tied_spaces(), seed=st.integers(0, 2**16))
def test_sample_switch_and_repair_of_a_tied_space_keep_ties_and_budget(space, seed):
    rng = np.random.default_rng(seed)
    lv = space.sample(rng)
    _keeps(space, lv)
    _keeps(space, space.switch(lv, rng, 2))
    _keeps(space, space.repair(rng.integers(0, space.n_levels), rng))
    assert np.array_equal(space.reduce(space.expand(lv)), lv)
    assert np.array_equal(member_levels(space, space.expand(lv)), space.expand(lv))


def test_a_member_assignment_that_breaks_a_tie_is_refused():
    space = TiedSpace(LevelSpace(3, n_units=3), [[0, 2]])
    assert space.n_units == 2 and space.expand([1, 2]).tolist() == [1, 2, 1]
    with pytest.raises(ValueError, match=r"units \[0, 2\] are tied but at levels \[0, 1\]"):
        space.reduce([0, 0, 1])


def test_a_tie_across_budget_groups_merges_their_budgets():
    members = LevelSpace(3, n_units=4, total={"a": 2, "b": 2}, groups=["a", "a", "b", "b"])
    space = TiedSpace(members, [[1, 2]])
    assert space.n_groups == 1 and space.group_bounds() == {"a": (4.0, 4.0)}
    assert members.is_feasible(space.expand(space.sample(np.random.default_rng(0))))


def test_group_costs_are_the_sums_of_their_members():
    members = LevelSpace([2, 3, 3], costs=[[0, 1], [0, 2, 4], [0, 3, 6]])
    space = TiedSpace(members, ["x", "y", "y"])
    assert space.costs[1, :3].tolist() == [0, 5, 10]
    assert space.n_levels.tolist() == [2, 3]
    est = space.reduce_values(np.array([[1.0, 2.0, np.nan], [1.0, 2.0, 3.0], [0.5, 0.5, 0.5]]))
    assert est[1].tolist() == [1.5, 2.5, 3.5]
