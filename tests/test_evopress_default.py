"""The default EvoPress (``evopress``): surrogate, model jumps, probes, paired racing; beside ``evopress-ref``."""

from __future__ import annotations

import numpy as np
import pytest

from levelsearch import (
    EvoPress,
    LevelSpace,
    Problem,
    ReferenceEvoPress,
    get_optimizer,
    make_problem,
    minimize,
    solve_additive,
)
from levelsearch.surrogate import AdditiveSurrogate


def test_evopress_is_the_new_algorithm_and_the_reference_stays_registered():
    assert get_optimizer("evopress") is EvoPress
    assert get_optimizer("evopress-ref") is ReferenceEvoPress


def _trajectory(name, seed, problem, **kw):
    res = minimize(problem, optimizer=name, seed=seed, max_evaluations=300, options=kw or None)
    return [(e.levels.tolist(), e.fidelity, e.sample, e.value) for e in res.history], res.best_levels.tolist()


@pytest.mark.parametrize(
    "config",
    [
        {"kind": "interacting", "n_units": 24, "n_levels": 4, "seed": 3},
        {"kind": "noisy", "base": {"kind": "linear", "n_units": 16, "total": 4}, "sigma": 2.0},
    ],
    ids=["interacting", "noisy"],
)
def test_same_seed_same_trajectory_other_seed_other_trajectory(config):
    problem = make_problem(config)
    kw = {"steps": [[64, 3], [None, 1]]} if config["kind"] == "noisy" else {}
    a = _trajectory("evopress", 4, problem, **kw)
    assert a == _trajectory("evopress", 4, problem, **kw)
    assert a != _trajectory("evopress", 5, problem, **kw)


def _value_start(opt, value=5.0):
    """A given start is measured once, alone, at the final fidelity before the first generation."""
    batch = opt.ask()
    assert len(batch) == 1 and batch[0].levels.tolist() == opt.parent.tolist()
    assert batch[0].fidelity == opt.steps[-1].fidelity
    opt.tell(batch, [value])
    assert opt.parent_value == value and opt.generation == 0


class _Watch(EvoPress):
    """Records every assignment told with a finite value; checks the parent after each tell."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.told: dict[bytes, list[float]] = {}

    def tell(self, requests, values):
        for r, v in zip(requests, values):
            if np.isfinite(v):
                self.told.setdefault(r.levels.tobytes(), []).append(float(v))
        super().tell(requests, values)
        if self.parent is not None and self.generation > 0:
            assert self.parent.tobytes() in self.told, "the parent was never evaluated"
            assert self.parent_value in self.told[self.parent.tobytes()]


@pytest.mark.parametrize("screen", [1, 4])
def test_the_surrogate_never_promotes_an_unevaluated_candidate(screen):
    problem = make_problem({"kind": "interacting", "n_units": 32, "n_levels": 3, "seed": 1})
    opt = _Watch(problem.space, seed=0, screen=screen, prior=np.random.default_rng(0).random((32, 3)))
    minimize(problem, optimizer=opt, max_evaluations=400)
    assert opt.generation > 10


def test_with_a_prior_the_first_jump_is_the_knapsack_optimum_of_the_estimates():
    space = LevelSpace(2, n_units=12, total=4)
    prior = np.zeros((12, 2))
    prior[:, 1] = np.arange(12, 0, -1)  # dropping the last units is cheapest
    opt = EvoPress(space, seed=0, prior=prior, start=[1, 1, 1, 1] + [0] * 8)
    _value_start(opt)
    batch = opt.ask()
    want, _ = solve_additive(space, prior)
    assert batch[0].levels.tolist() == opt.parent.tolist()
    assert batch[1].levels.tolist() == want.tolist() == [0] * 8 + [1] * 4


def test_with_enough_budget_an_additive_objective_is_solved_exactly():
    problem = make_problem({"kind": "linear", "n_units": 40, "n_levels": 5, "seed": 2})
    res = minimize(problem, optimizer="evopress", seed=0, max_evaluations=400, options={"budget": 400})
    assert res.best_value == pytest.approx(problem.optimum, abs=1e-9)
    ref = minimize(problem, optimizer="evopress-ref", seed=0, max_evaluations=400)
    assert ref.best_value > problem.optimum + 1e-6  # what the reference reaches on the same budget


def test_paired_racing_puts_the_parent_in_every_step_on_one_nested_sample():
    space = LevelSpace(2, n_units=20, total=5)
    steps = [(100, 3), (400, 2), (1000, 1)]
    opt = EvoPress(space, seed=0, offspring=6, steps=steps, start=[1] * 5 + [0] * 15, jump=False, screen=1)
    _value_start(opt)
    parent = opt.parent.copy()
    b1 = opt.ask()
    assert b1[0].levels.tolist() == parent.tolist() and len(b1) == 7
    assert {r.fidelity for r in b1} == {100} and len({r.sample for r in b1}) == 1
    # the first step keeps its best 3 whatever the parent's value (it is the noisiest)
    opt.tell(b1, [1.0, 4.0, 3.0, 9.0, 8.0, 7.0, 6.0])
    b2 = opt.ask()
    kids = [b1[k].levels.tolist() for k in (2, 1, 6)]
    assert [r.levels.tolist() for r in b2] == [parent.tolist(), *kids]
    assert {r.fidelity for r in b2} == {400} and {r.sample for r in b2} == {b1[0].sample}
    # past it, only an offspring ahead of the parent on the same tokens goes on
    opt.tell(b2, [5.0, 4.0, 6.0, 7.0])
    b3 = opt.ask()
    assert [r.levels.tolist() for r in b3] == [parent.tolist(), kids[0]]
    assert {r.fidelity for r in b3} == {1000} and {r.sample for r in b3} == {b1[0].sample}
    opt.tell(b3, [2.0, 1.0])
    assert opt.parent.tolist() == kids[0] and opt.parent_value == 1.0 and opt.generation == 1


def test_a_generation_whose_offspring_all_lose_a_race_ends_before_its_final_step():
    space = LevelSpace(2, n_units=20, total=5)
    steps = [(100, 2), (400, 1), (1000, 1)]
    opt = EvoPress(space, seed=0, offspring=4, steps=steps, start=[1] * 5 + [0] * 15, jump=False, screen=1)
    _value_start(opt)
    b1 = opt.ask()
    opt.tell(b1, [1.0, 2.0, 3.0, 4.0, 5.0])
    b2 = opt.ask()
    assert len(b2) == 3
    opt.tell(b2, [1.0, 2.0, 3.0])  # the parent leads on these 400 tokens
    assert opt.generation == 1 and opt.parent.tolist() == b1[0].levels.tolist()
    assert opt.parent_value == 5.0  # the start's full-fidelity value, not a partial one
    assert {r.fidelity for r in opt.ask()} == {100}  # the next generation, no full-fidelity step paid


def test_an_assignment_that_lost_a_final_step_is_not_proposed_again():
    space = LevelSpace(2, n_units=6, total=2)
    opt = EvoPress(space, seed=0, offspring=4, jump=False, start=[1, 1, 0, 0, 0, 0])
    _value_start(opt, 0.0)
    lost: set[bytes] = set()
    for _ in range(3):
        batch = opt.ask()
        for r in batch[1:]:
            assert r.levels.tobytes() not in lost
        opt.tell(batch, [0.0] + [1.0] * (len(batch) - 1))  # the parent always wins
        lost |= {r.levels.tobytes() for r in batch[1:]}


class _WithEstimates(Problem):
    name = "with-estimates"

    def __init__(self):
        super().__init__(LevelSpace(2, n_units=10, total=3))
        self.errors = np.stack([np.zeros(10), np.arange(10.0)], axis=1)
        self.asked = 0

    def evaluate(self, levels, fidelity=None, sample=None):
        return float(self.errors[np.arange(10), levels].sum())

    def unit_errors(self):
        self.asked += 1
        return self.errors


def test_minimize_gives_evopress_the_problems_unit_errors_and_the_jump_uses_them():
    problem = _WithEstimates()
    res = minimize(problem, optimizer="evopress", seed=0, max_evaluations=40)
    assert problem.asked == 1
    assert res.best_levels.tolist() == [1, 1, 1] + [0] * 7  # the dp solution of the estimates, found at once
    minimize(problem, optimizer="evopress", seed=0, max_evaluations=40, options={"use_unit_errors": False})
    minimize(problem, optimizer="evopress-ref", seed=0, max_evaluations=40)
    assert problem.asked == 1  # neither asks


def test_surrogate_learns_an_additive_function_from_same_sample_differences():
    rng = np.random.default_rng(0)
    space = LevelSpace(3, n_units=8, total=8)
    true = rng.random((8, 3))
    sur = AdditiveSurrogate(space, decay=1.0)
    for _ in range(60):
        pts = np.stack([space.sample(rng) for _ in range(6)])
        offset = rng.normal() * 100  # the batch's data sample moves every value alike
        sur.add_batch(pts, true[np.arange(8), pts].sum(axis=1) + offset)
    sur.fit(exact=True)
    test = np.stack([space.sample(rng) for _ in range(50)])
    pred, want = sur.predict(test), true[np.arange(8), test].sum(axis=1)
    assert np.corrcoef(pred, want)[0, 1] > 0.999


def _incommensurable_space():
    """Two levels per unit whose costs share no common step (sqrt(2), sqrt(3), ...): no exact knapsack."""
    costs = [[0.0, float(np.sqrt(k + 2))] for k in range(8)]
    return LevelSpace(2, n_units=8, total=sum(c[1] for c in costs) / 2, costs=costs, tol=2.0)


_NO_JUMPS = "model jumps are off for the rest of the run: costs of group 'all' are not commensurable"


def test_a_knapsack_that_cannot_be_solved_turns_jumps_off_with_one_warning_and_a_note():
    space = _incommensurable_space()
    with pytest.warns(RuntimeWarning) as caught:
        opt = EvoPress(space, prior=np.zeros((8, 2)))  # a prior: the first generation already tries a jump
        res = minimize(lambda lv: float(lv @ np.arange(8)), space, optimizer=opt, max_evaluations=80)
    said = [str(w.message) for w in caught if _NO_JUMPS in str(w.message)]
    assert len(said) == 1  # once, not once per generation
    assert any(_NO_JUMPS in note for note in res.notes)
    assert opt.generation > 1  # the search goes on without jumps


def test_the_no_jumps_note_comes_back_on_resume(tmp_path):
    space = _incommensurable_space()
    fn = lambda lv: float(lv @ np.arange(8))  # noqa: E731
    kw = {"optimizer": "evopress", "seed": 1, "options": {"prior": np.zeros((8, 2))}, "journal": tmp_path / "j.db"}
    with pytest.warns(RuntimeWarning):
        first = minimize(fn, space, max_evaluations=30, **kw)
        resumed = minimize(fn, space, max_evaluations=60, **kw)
    assert resumed.n_replayed == 30
    assert resumed.notes == first.notes and any(_NO_JUMPS in n for n in resumed.notes)


def test_a_space_too_large_for_the_automatic_surrogate_says_it_searches_without_one():
    space = LevelSpace(2, n_units=2100, total=1000, tol=1000)  # 4,200 levels in all: over MAX_SURROGATE_PARAMS
    with pytest.warns(RuntimeWarning, match="no surrogate, so no model jumps, probes or screening"):
        opt = EvoPress(space)
    assert opt.surrogate is None
    assert any("4200 levels" in n for n in opt.notes())
    assert EvoPress(space, surrogate=False).notes() == []  # asked for: nothing to say


def test_a_search_without_fallbacks_has_no_notes():
    space = LevelSpace(3, n_units=12, total=12)  # uniform level 1 meets the budget
    res = minimize(lambda lv: float(lv @ np.arange(12)), space, optimizer="evopress", max_evaluations=60)
    assert res.notes == []
