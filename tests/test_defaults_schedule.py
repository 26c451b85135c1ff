"""Problems supply their selection schedule and start; every door (minimize, run, bench) uses them
when the user gives none, and says what was used and where it came from."""

from __future__ import annotations

import json

import numpy as np

from levelsearch import LevelSpace, Problem, make_problem, minimize, solve_additive
from levelsearch.config import parse_config
from levelsearch.driver import problem_options
from levelsearch.problem import fidelity_schedule
from levelsearch.runner import run_config

NOISY = {"kind": "noisy", "base": {"kind": "linear", "n_units": 12, "total": 4}, "sigma": 2.0, "max_fidelity": 4096}


def test_fidelity_schedule_screens_on_a_sixteenth_confirms_on_a_quarter_and_decides_on_the_pool() -> None:
    assert fidelity_schedule(4096)["steps"] == [(256, 3), (1024, 1), (4096, 1)]
    assert fidelity_schedule(4096, "evopress-ref")["offspring"] == 16
    assert fidelity_schedule(4096, first=512)["steps"] == [(512, 3), (2048, 1), (4096, 1)]
    assert fidelity_schedule(2)["steps"] == [(1, 3), (2, 1)]
    assert fidelity_schedule(1)["steps"] == [(1, 1)]


def test_minimize_without_options_uses_the_problems_schedule() -> None:
    problem = make_problem(NOISY)
    res = minimize(problem, max_cost=60_000, seed=0)
    assert res.defaults["schedule_from"] == "problem"
    assert res.defaults["schedule"]["steps"] == [[256, 3], [1024, 1], [4096, 1]]
    assert {e.fidelity for e in res.history} >= {256, 1024, 4096}


def test_a_plain_function_with_a_fidelity_and_a_pool_gets_the_same_schedule() -> None:
    space = LevelSpace(2, n_units=10, total=3)
    w = np.linspace(0.1, 1.0, 10)

    def fitness(levels: np.ndarray, fidelity: int | None, sample: int | None) -> float:
        return float(w @ levels)

    from levelsearch import FunctionProblem

    res = minimize(FunctionProblem(fitness, space, max_fidelity=1024), max_evaluations=60)
    assert res.defaults["schedule_from"] == "problem"
    assert {e.fidelity for e in res.history} >= {64, 256, 1024}


def test_the_users_steps_win_over_the_problems_schedule() -> None:
    problem = make_problem(NOISY)
    res = minimize(problem, max_evaluations=40, options={"steps": [[512, 1]]})
    assert res.defaults["schedule_from"] == "options"
    assert {e.fidelity for e in res.history} == {512}


def test_a_single_key_given_by_the_user_is_kept_and_the_rest_comes_from_the_problem() -> None:
    options, defaults = problem_options(make_problem(NOISY), "evopress", {"offspring": 5})
    assert options["offspring"] == 5 and options["steps"] == [(256, 3), (1024, 1), (4096, 1)]
    assert defaults["schedule_from"] == "problem, with the user's offspring"


def test_evopress_ref_gets_the_problems_schedule_with_its_own_offspring() -> None:
    options, defaults = problem_options(make_problem(NOISY), "evopress-ref", None)
    assert options["offspring"] == 16 and "screen" not in options
    assert defaults["schedule_from"] == "problem"


def test_other_optimizers_get_the_options_unchanged() -> None:
    assert problem_options(make_problem(NOISY), "random", {"batch": 4}) == ({"batch": 4}, {})


def test_a_problem_without_fidelity_keeps_the_optimizers_schedule() -> None:
    res = minimize(make_problem({"kind": "linear", "n_units": 8, "total": 3}), max_evaluations=30)
    assert res.defaults["schedule_from"] == "optimizer"


class _WithEstimates(Problem):
    """A linear problem whose per-unit estimates are exact (its prior's knapsack optimum is the optimum)."""

    def __init__(self) -> None:
        super().__init__(LevelSpace(3, n_units=10, total=10))
        self.err = np.random.default_rng(0).random((10, 3))

    def evaluate(self, levels: np.ndarray, fidelity: int | None = None, sample: int | None = None) -> float:
        return float(self.err[np.arange(10), levels].sum())

    def unit_errors(self) -> np.ndarray:
        return self.err


def test_evopress_starts_from_the_knapsack_optimum_of_the_problems_estimates() -> None:
    problem = _WithEstimates()
    res = minimize(problem, max_evaluations=20)
    best, _ = solve_additive(problem.space, problem.err)
    assert res.history[0].levels.tolist() == best.tolist()
    assert res.defaults["start_from"] == "optimizer (prior)"


def test_a_start_given_by_the_user_wins_over_the_prior() -> None:
    problem = _WithEstimates()
    start = np.full(10, 1)
    res = minimize(problem, max_evaluations=20, options={"start": start})
    assert res.history[0].levels.tolist() == start.tolist()
    assert res.defaults["start_from"] == "options"


class _WithStart(_WithEstimates):
    def default_start(self) -> np.ndarray:
        return np.array([2, 0] * 5)


def test_a_problems_default_start_is_used_when_the_user_gives_none() -> None:
    res = minimize(_WithStart(), max_evaluations=20)
    assert res.history[0].levels.tolist() == [2, 0] * 5
    assert res.defaults["start_from"] == "problem"


def test_levelsearch_run_records_the_schedule_and_where_it_came_from(tmp_path) -> None:
    cfg = parse_config({"problem": NOISY, "optimizer": {"name": "evopress"}, "budget": {"max_cost": 30_000}})
    summary = run_config(cfg, tmp_path / "run", progress=False, plot=False)
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk["defaults"] == summary["defaults"]
    assert on_disk["defaults"]["schedule_from"] == "problem"
    assert on_disk["defaults"]["schedule"]["steps"] == [[256, 3], [1024, 1], [4096, 1]]
    assert on_disk["stop_reason"] == ""


def test_bench_uses_the_problems_schedule(tmp_path) -> None:
    from levelsearch.bench import parse_bench_config, run_bench

    spec = {
        "seeds": [0],
        "budget": {"max_cost": 20_000},
        "optimizers": ["evopress"],
        "problems": [{"label": "noisy", **NOISY}],
    }
    run_bench(parse_bench_config(spec), tmp_path / "bench", workers=1, progress=False)
    runs = [json.loads(p.read_text()) for p in (tmp_path / "bench").rglob("*.json")]
    used = [r["result"]["defaults"] for r in runs if "result" in r]
    assert used and all(d["schedule_from"] == "problem" for d in used)
