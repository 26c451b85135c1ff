"""minimize(): signatures, budgets, caching, registry."""

from __future__ import annotations

import numpy as np
import pytest

import levelsearch as ls
from levelsearch import LevelSpace, Problem, minimize


def _linear(n=20, seed=0):
    w = np.random.default_rng(seed).random(n)
    return w, (lambda lv: float(w @ lv))


def test_plain_function_gets_levels_only():
    calls = []
    space = LevelSpace(2, n_units=6, total=2)

    def fn(levels):
        calls.append(levels.copy())
        return float(levels[0])

    res = minimize(fn, space, max_evaluations=20, seed=0)
    assert res.n_evaluations == len(calls) <= 20
    assert all(space.is_feasible(c) for c in calls)


def test_three_argument_function_gets_fidelity_and_sample_seed():
    seen = []
    space = LevelSpace(2, n_units=10, total=3)

    def fn(levels, fidelity, seed):
        seen.append((fidelity, seed))
        return float(levels[:3].sum()) + 1.0 / fidelity

    res = minimize(fn, space, max_evaluations=60, seed=0, options={"steps": [(16, 2), (256, 1)]})
    assert {f for f, _ in seen} <= {16, 256}
    assert all(isinstance(s, int) for _, s in seen)
    assert res.cost == sum(f for f, _ in seen)


def test_no_identical_request_is_evaluated_twice():
    keys = []
    space = LevelSpace(2, n_units=8, total=2)  # 28 feasible points only
    w = np.arange(8.0)

    def fn(levels):
        keys.append(levels.tobytes())
        return float(w @ levels)

    res = minimize(fn, space, max_evaluations=10_000, seed=0)
    assert len(keys) == len(set(keys)) <= 28
    # evopress stops by itself once it has no unevaluated neighbour left to propose; the driver stops
    # an optimizer that keeps asking for evaluated points ("exhausted")
    assert res.stopped_by in ("optimizer", "exhausted")
    assert res.best_value == 1.0
    ref = minimize(fn, space, optimizer="evopress-ref", max_evaluations=10_000, seed=0)
    assert ref.stopped_by == "exhausted" and ref.best_value == 1.0


def test_evaluation_budget_is_never_exceeded():
    _, fn = _linear()
    for budget in (1, 7, 50, 333):
        res = minimize(fn, LevelSpace(2, n_units=20, total=5), max_evaluations=budget, seed=1)
        assert res.n_evaluations <= budget
        assert len(res.history) == res.n_evaluations


def test_cost_budget_counts_fidelity():
    space = LevelSpace(2, n_units=20, total=5)

    def fn(levels, fidelity, seed):
        return float(levels[:5].sum())

    res = minimize(fn, space, max_cost=5000, seed=0, options={"steps": [(100, 2), (400, 1)]})
    assert res.cost <= 5000
    assert res.cost == sum(e.fidelity for e in res.history)


def test_same_seed_same_result_and_history():
    _, fn = _linear(30)
    space = LevelSpace(3, n_units=30, total=20)
    a = minimize(fn, space, max_evaluations=500, seed=7)
    b = minimize(fn, space, max_evaluations=500, seed=7)
    assert a.best_value == b.best_value
    assert [e.levels.tolist() for e in a.history] == [e.levels.tolist() for e in b.history]


def test_target_stops_early():
    w, fn = _linear()
    space = LevelSpace(2, n_units=20, total=5)
    target = float(np.sort(w)[:5].sum())
    res = minimize(fn, space, max_evaluations=100_000, seed=0, target=target)
    assert res.stopped_by == "target"
    assert res.best_value == pytest.approx(target)


def test_exceptions_in_the_fitness_are_failures_not_crashes():
    space = LevelSpace(2, n_units=10, total=3)

    def fn(levels):
        if levels[0] == 1:
            raise RuntimeError("boom")
        return float(levels[1:4].sum())

    res = minimize(fn, space, max_evaluations=300, seed=0)
    assert res.n_failures > 0
    assert res.best_levels[0] == 0
    assert np.isfinite(res.best_value)


def test_an_always_failing_fitness_stops_with_a_clear_error():
    space = LevelSpace(2, n_units=10, total=3)
    with pytest.raises(ls.AllFailedError, match="in a row failed"):
        minimize(lambda lv: float("nan"), space, max_evaluations=1000, max_consecutive_failures=20)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "give a stopping rule"),
        ({"max_evaluations": 0}, "positive integer"),
        ({"max_evaluations": 10, "optimizer": "no-such"}, "unknown optimizer 'no-such'"),
        ({"max_evaluations": 10, "options": {"bogus": 1}}, "bad options for optimizer"),
    ],
)
def test_bad_arguments_raise_value_errors(kwargs, message):
    _, fn = _linear()
    with pytest.raises(ValueError, match=message):
        minimize(fn, LevelSpace(2, n_units=20, total=5), **kwargs)


def test_registering_a_taken_name_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        ls.register_optimizer("evopress", ls.Optimizer)  # type: ignore[type-abstract]


def test_a_registered_custom_optimizer_runs_through_minimize():
    class FirstFeasible(ls.Optimizer):
        """Proposes random feasible points."""

        def ask(self):
            return [ls.Request(self.space.sample(self.rng))]

        def tell(self, requests, values):
            self._track(requests, values)

    ls.register_optimizer("test-first-feasible", FirstFeasible, replace=True)
    _, fn = _linear()
    res = minimize(fn, LevelSpace(2, n_units=20, total=5), optimizer="test-first-feasible", max_evaluations=30)
    assert res.n_evaluations == 30
    assert "test-first-feasible" in ls.available_optimizers()


def test_a_problem_with_only_a_batch_oracle_evaluates_one_assignment_as_a_batch_of_one():
    class Batched(Problem):
        def evaluate_many(self, requests):
            return [float(np.sum(r.levels)) + (r.fidelity or 0) for r in requests]

    space = LevelSpace(2, n_units=4, total=2)
    assert Batched(space).evaluate(np.array([1, 1, 0, 0]), 10, 0) == 12.0


def test_a_problem_without_an_oracle_says_what_to_define():
    with pytest.raises(TypeError, match="must define evaluate"):
        Problem(LevelSpace(2, n_units=4, total=2)).evaluate(np.array([1, 1, 0, 0]))


class _BrokenBatchOracle(Problem):
    """A batch oracle that fails every time, beside a working one-at-a-time oracle."""

    def evaluate(self, levels, fidelity=None, sample=None):
        return float(np.sum(levels * np.arange(levels.size)))

    def evaluate_many(self, requests):
        raise RuntimeError("batch too large\nsecond line")


def test_a_batch_oracle_that_fails_is_replaced_by_single_calls_with_one_warning_and_a_note():
    problem = _BrokenBatchOracle(LevelSpace(3, n_units=12, total=12))
    with pytest.warns(RuntimeWarning) as caught:
        res = minimize(problem, optimizer="evopress-ref", max_evaluations=64)
    assert res.n_evaluations == 64 and res.n_failures == 0  # every request answered one at a time
    said = [str(w.message) for w in caught if "evaluate_many" in str(w.message)]
    assert said == [
        "_BrokenBatchOracle.evaluate_many raised RuntimeError (batch too large); its batches are evaluated "
        "one request at a time whenever it fails (slower; the values are the same)"
    ]
    assert res.notes == said
