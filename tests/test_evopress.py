"""ReferenceEvoPress (evopress-ref): start, mutation, multi-step selection, elitism, determinism."""

from __future__ import annotations

import numpy as np
import pytest

import levelsearch as ls
from levelsearch import LevelSpace
from levelsearch import (
    ReferenceEvoPress as EvoPress,  # the reference behaviour; the default is tested in test_evopress_default.py
)


def _ones(n, k):
    return [1] * k + [0] * (n - k)


def _run_batches(opt, fn, n_batches):
    seen = []
    for _ in range(n_batches):
        batch = opt.ask()
        seen.append(batch)
        opt.tell(batch, [fn(r) for r in batch])
    return seen


def test_starts_from_the_uniform_assignment_when_it_is_feasible():
    opt = EvoPress(LevelSpace(3, n_units=6, total=6), seed=0)
    assert opt.parent.tolist() == [1] * 6


def test_a_uniform_start_asked_for_that_misses_the_budget_starts_at_random_and_says_so():
    space = LevelSpace(3, n_units=4, total=5)  # uniform totals are 0, 4 and 8
    with pytest.warns(RuntimeWarning, match="no uniform assignment meets the budget"):
        opt = EvoPress(space, seed=0, init_candidates=8, start="uniform")
    assert opt.parent is None and len(opt.ask()) == 8  # the random start's candidates
    assert opt.notes() == [
        "EvoPress: no uniform assignment meets the budget; the search starts from the best of 8 random "
        "feasible ones instead (start='random')"
    ]
    with pytest.warns(RuntimeWarning, match="no uniform assignment"):
        assert len(EvoPress(space, preset="quant").notes()) == 1  # the preset asks for a uniform start
    assert EvoPress(space, seed=0, start="random").notes() == []  # random asked for: nothing to say
    assert EvoPress(space, seed=0).notes() == []  # the default start: documented to go random quietly


def test_random_start_evaluates_init_candidates_and_keeps_the_best():
    space = LevelSpace(2, n_units=10, total=3)
    opt = EvoPress(space, seed=0, init_candidates=8, init_fidelity=64, steps=[(64, 1)])
    batch = opt.ask()
    assert len(batch) == 8 and all(r.fidelity == 64 for r in batch)
    values = list(range(8, 0, -1))
    opt.tell(batch, values)
    assert opt.parent.tolist() == batch[-1].levels.tolist()


def test_offspring_are_distinct_from_each_other_and_from_the_parent():
    opt = EvoPress(LevelSpace(2, n_units=30, total=10), seed=1, offspring=32, start=_ones(30, 10))
    batch = opt.ask()
    keys = {r.levels.tobytes() for r in batch}
    parent = opt.parent.tobytes()
    kids = [r.levels.tobytes() for r in batch if r.levels.tobytes() != parent]
    assert len(keys) == len(batch)
    assert len(kids) == 32


def test_number_of_switches_is_biased_to_few():
    space = LevelSpace(2, n_units=200, total=100)
    opt = EvoPress(space, seed=0, offspring=2000, start=_ones(200, 100))
    batch = opt.ask()
    dist = np.array([int((r.levels != opt.parent).sum()) // 2 for r in batch[1:]])
    frac = [(dist == k).mean() for k in (1, 2, 3)]
    # min(U{1..3}, U{1..3}): 5/9, 3/9, 1/9
    assert frac[0] == pytest.approx(5 / 9, abs=0.05)
    assert frac[1] == pytest.approx(3 / 9, abs=0.05)
    assert frac[2] == pytest.approx(1 / 9, abs=0.05)


def test_multi_step_selection_follows_the_schedule_with_fresh_samples():
    space = LevelSpace(2, n_units=20, total=5)
    opt = EvoPress(space, seed=0, offspring=8, steps=[(100, 4), (1000, 2), (5000, 1)], start=_ones(20, 5))
    parent = opt.parent
    b1 = opt.ask()
    assert len(b1) == 8 and {r.fidelity for r in b1} == {100}
    opt.tell(b1, [float(i) for i in range(8)])
    b2 = opt.ask()
    assert [r.levels.tolist() for r in b2] == [r.levels.tolist() for r in b1[:4]]
    assert {r.fidelity for r in b2} == {1000}
    assert b2[0].sample != b1[0].sample
    assert len({r.sample for r in b2}) == 1  # one minibatch shared by the step
    opt.tell(b2, [3.0, 2.0, 1.0, 0.0])
    b3 = opt.ask()
    # the parent joins the final step, with the two survivors
    assert len(b3) == 3 and b3[0].levels.tolist() == parent.tolist()
    assert {r.fidelity for r in b3} == {5000}


def test_parent_survives_when_no_offspring_is_better():
    space = LevelSpace(2, n_units=10, total=3)
    opt = EvoPress(space, seed=0, offspring=4, start=[1, 1, 1, 0, 0, 0, 0, 0, 0, 0])
    batch = opt.ask()
    opt.tell(batch, [0.0] + [5.0] * (len(batch) - 1))
    assert opt.parent.tolist() == [1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
    assert opt.recommend()[1] == 0.0


def test_failed_offspring_never_replace_the_parent():
    space = LevelSpace(2, n_units=10, total=3)
    opt = EvoPress(space, seed=0, offspring=4, start=_ones(10, 3))
    batch = opt.ask()
    parent = batch[0].levels.copy()
    opt.tell(batch, [1.0] + [float("nan")] * (len(batch) - 1))
    assert opt.parent.tolist() == parent.tolist()


def test_same_seed_gives_the_same_trajectory_and_another_seed_does_not():
    space = LevelSpace(3, n_units=40, total=30)
    w = np.random.default_rng(5).random((40, 3))

    def fn(r):
        return float(w[np.arange(40), r.levels].sum())

    def traj(seed):
        opt = EvoPress(space, seed=seed, offspring=8, steps=[(10, 2), (100, 1)])
        return [[r.levels.tolist() for r in b] for b in _run_batches(opt, fn, 30)]

    assert traj(3) == traj(3)
    assert traj(3) != traj(4)


@pytest.mark.parametrize("preset", sorted(ls.PRESETS))
def test_presets_build_valid_schedules(preset):
    opt = EvoPress(LevelSpace(2, n_units=16, total=4), seed=0, preset=preset)
    assert opt.steps[-1].survivors == 1
    assert opt.offspring == ls.PRESETS[preset]["offspring"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"preset": "nope"}, "unknown EvoPress preset"),
        ({"steps": [(100, 2)]}, "exactly 1 survivor"),
        ({"steps": [(100, 1), (200, 2), (300, 1)]}, "must not grow"),
        ({"steps": [(-5, 1)]}, "positive integer"),
        ({"offspring": 0}, "offspring must be a positive integer"),
        ({"start": "best"}, "start must be"),
        ({"start": [1, 0, 0, 0]}, "does not meet the budget"),
    ],
)
def test_bad_options_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EvoPress(LevelSpace(2, n_units=4, total=2), seed=0, **kwargs)


def test_grouped_switches_keep_each_group_budget():
    space = LevelSpace(2, n_units=12, groups=["attn", "mlp"] * 6, total=2)
    opt = EvoPress(space, seed=0, offspring=50, start="random", init_candidates=4)
    opt.tell(opt.ask(), [1.0, 2.0, 3.0, 4.0])
    for r in opt.ask():
        assert space.is_feasible(r.levels)
