"""The contract every registered optimizer keeps (EvoPress, baselines, third-party entry points).

Run over ``levelsearch.available_optimizers()`` so an optimizer is tested the
day it is registered: proposals are feasible, the budget is never exceeded, the
same seed gives the same trajectory, and failed (NaN) evaluations neither stop
the search nor get recommended. Two spaces: an exact budget with 3 levels, and
a band budget per group.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import levelsearch
from levelsearch import LevelSpace, minimize

OPTIMIZERS = levelsearch.available_optimizers()
BUDGET = 20


def _spaces() -> dict[str, LevelSpace]:
    return {
        "exact": LevelSpace(3, n_units=8, total=6),
        "band-groups": LevelSpace(3, n_units=8, total=3, groups=["attn", "mlp"] * 4, tol=2),
    }


SPACES = list(_spaces())
WEIGHTS = np.random.default_rng(7).uniform(0.5, 2.0, size=(8, 3)).cumsum(axis=1)


def _objective(levels: np.ndarray) -> float:
    lv = np.asarray(levels)
    return float(WEIGHTS[np.arange(8), lv].sum() + 0.3 * (lv[:-1] * lv[1:]).sum())


def _failing_objective(levels: np.ndarray) -> float:
    # a deterministic third of the points fail
    return math.nan if int(np.asarray(levels) @ np.arange(1, 9)) % 3 == 0 else _objective(levels)


def _options(name: str) -> dict[str, object]:
    # keep every case small: EvoPress with a small population
    return {"offspring": 4} if name == "evopress" else {}


@pytest.mark.parametrize("space_name", SPACES)
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_proposal_is_feasible(name: str, space_name: str) -> None:
    space = _spaces()[space_name]
    opt = levelsearch.make_optimizer(name, space, seed=1, **_options(name))
    asked = 0
    while asked < BUDGET and not opt.stop():
        batch = opt.ask()
        assert batch, "ask() returned an empty batch while stop() is false"
        for req in batch:
            assert space.is_feasible(req.levels), f"{name} proposed an infeasible point {req.levels}"
        opt.tell(batch, [_objective(r.levels) for r in batch])
        asked += len(batch)


@pytest.mark.parametrize("space_name", SPACES)
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_budget_is_never_exceeded(name: str, space_name: str) -> None:
    space = _spaces()[space_name]
    calls: list[np.ndarray] = []

    def fn(levels: np.ndarray) -> float:
        calls.append(np.asarray(levels).copy())
        return _objective(levels)

    res = minimize(fn, space, optimizer=name, max_evaluations=BUDGET, seed=0, options=_options(name))
    assert res.n_evaluations <= BUDGET
    assert len(calls) == res.n_evaluations
    assert space.is_feasible(res.best_levels)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_same_seed_gives_the_same_trajectory(name: str) -> None:
    space = _spaces()["band-groups"]
    runs = [
        minimize(_objective, space, optimizer=name, max_evaluations=BUDGET, seed=3, options=_options(name))
        for _ in range(2)
    ]
    a, b = ([e.levels.tolist() for e in r.history] for r in runs)
    assert a == b
    assert [e.value for e in runs[0].history] == [e.value for e in runs[1].history]


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_failed_evaluations_neither_stop_the_search_nor_are_recommended(name: str) -> None:
    space = _spaces()["exact"]
    res = minimize(_failing_objective, space, optimizer=name, max_evaluations=BUDGET, seed=0, options=_options(name))
    assert res.n_failures > 0, "the test objective should make some evaluations fail"
    assert res.stopped_by in ("max_evaluations", "optimizer", "exhausted")
    assert math.isfinite(res.best_value)
    assert not math.isnan(_failing_objective(res.best_levels))
    failed = [e.levels.tolist() for e in res.history if not math.isfinite(e.value)]
    assert res.best_levels.tolist() not in failed
