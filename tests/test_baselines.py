"""The baselines: dp is exact on additive problems and loses to EvoPress on interacting ones; encodings."""

from __future__ import annotations

import numpy as np
import pytest
from levelsearch.baselines._common import decode_rank
from levelsearch.baselines.dp import greedy_fill
from levelsearch.baselines.probing import ErrorProber

import levelsearch
from levelsearch import LevelSpace, make_problem, minimize

BASELINES = [
    "optuna-tpe",
    "optuna-cmaes",
    "optuna-gp",
    "optuna-nsga2",
    "optuna-random",
    "nevergrad-ngopt",
    "nevergrad-discretelenglerplusone",
    "nevergrad-portfoliodiscreteoneplusone",
    "nevergrad-discreteoneplusone",
    "nevergrad-cma",
    "dp",
    "random",
    "greedy",
]


def test_every_baseline_is_registered_by_its_entry_point() -> None:
    assert set(BASELINES) <= set(levelsearch.available_optimizers())


@pytest.mark.parametrize("n_levels", [2, 4])
@pytest.mark.parametrize("problem_seed", [0, 1, 2])
def test_dp_reaches_the_exact_optimum_of_the_linear_problem(n_levels: int, problem_seed: int) -> None:
    problem = make_problem({"kind": "linear", "n_units": 20, "n_levels": n_levels, "seed": problem_seed})
    res = minimize(problem, optimizer="dp", max_evaluations=500, seed=0)
    assert res.best_value == pytest.approx(problem.optimum, abs=1e-9)


def test_dp_spends_one_probe_per_unit_and_level_plus_the_base_and_the_solution() -> None:
    problem = make_problem({"kind": "linear", "n_units": 16, "n_levels": 3, "seed": 0})
    res = minimize(problem, optimizer="dp", max_evaluations=500, seed=0)
    assert res.stopped_by == "optimizer"
    assert 1 + 16 * 2 <= res.n_evaluations <= 1 + 16 * 2 + 16 + 1


@pytest.mark.parametrize("problem_seed", [0, 1, 2])
def test_evopress_beats_dp_on_the_interacting_problem(problem_seed: int) -> None:
    problem = make_problem({"kind": "interacting", "n_units": 24, "n_levels": 2, "seed": problem_seed})
    dp = minimize(problem, optimizer="dp", max_evaluations=400, seed=0)
    for seed in range(3):
        evo = minimize(problem, optimizer="evopress", max_evaluations=400, seed=seed)
        assert evo.best_value < dp.best_value


def test_dp_with_local_search_improves_on_plain_dp_when_errors_interact() -> None:
    problem = make_problem({"kind": "interacting", "n_units": 24, "n_levels": 2, "seed": 0})
    plain = minimize(problem, optimizer="dp", max_evaluations=400, seed=0)
    refined = minimize(problem, optimizer="dp", max_evaluations=400, seed=0, options={"local_search": True})
    assert refined.n_evaluations <= 400
    assert refined.best_value < plain.best_value


def test_probes_recover_additive_errors_up_to_the_budget_direction() -> None:
    space = LevelSpace(3, n_units=12, total=8)
    errors = np.random.default_rng(0).uniform(0, 1, size=(12, 3)).cumsum(axis=1)
    prober = ErrorProber(space, np.random.default_rng(1))
    while True:
        reqs = prober.next_batch(64)
        if not reqs:
            break
        prober.record(reqs, [float(errors[np.arange(12), r.levels].sum()) for r in reqs])
    fitted = prober.errors()
    # fitted = true - true[base] + lambda * (cost - cost[base]): the second differences along levels agree
    true_rel = errors - errors[np.arange(12), prober.base][:, None]
    diff = fitted - true_rel
    lam = np.diff(diff, axis=1)
    assert np.allclose(lam, lam.flat[0], atol=1e-8)
    assert (
        levelsearch.solve_additive(space, fitted)[0].tolist() == levelsearch.solve_additive(space, errors)[0].tolist()
    )


def test_greedy_fill_picks_the_smallest_errors_for_binary_equal_costs() -> None:
    space = LevelSpace(2, n_units=8, total=3)
    errors = np.zeros((8, 2))
    errors[:, 1] = [5, 1, 7, 3, 2, 9, 8, 6]
    lv = greedy_fill(space, errors, np.random.default_rng(0))
    assert sorted(np.flatnonzero(lv).tolist()) == [1, 3, 4]


def test_rank_decoding_puts_the_top_scores_at_level_one_in_each_group() -> None:
    space = LevelSpace(2, n_units=6, total=1, groups=["a", "b"] * 3)
    scores = np.array([0.1, 0.9, 0.8, 0.2, 0.3, 0.5])
    lv = decode_rank(space, scores, np.random.default_rng(0))
    assert lv.tolist() == [0, 1, 1, 0, 0, 0]


def test_rank_encoding_needs_binary_levels() -> None:
    with pytest.raises(ValueError, match="2 levels"):
        levelsearch.make_optimizer("nevergrad-cma", LevelSpace(3, n_units=6, total=4), encoding="rank")


@pytest.mark.parametrize("name", ["optuna-cmaes", "optuna-tpe", "nevergrad-cma", "nevergrad-discreteoneplusone"])
def test_rank_encoding_proposes_feasible_points(name: str) -> None:
    space = LevelSpace(2, n_units=12, total=4)
    opt = levelsearch.make_optimizer(name, space, seed=0, encoding="rank")
    for _ in range(15):
        batch = opt.ask()
        assert all(space.is_feasible(r.levels) for r in batch)
        opt.tell(batch, [float(r.levels @ np.arange(12)) for r in batch])


def test_optuna_tpe_learns_only_from_repaired_feasible_points() -> None:
    space = LevelSpace(3, n_units=8, total=5)
    opt = levelsearch.make_optimizer("optuna-tpe", space, seed=0)
    for _ in range(20):
        batch = opt.ask()
        opt.tell(batch, [float(r.levels @ np.arange(8)) for r in batch])
    complete = [t for t in opt._study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 20
    for t in complete:
        assert space.is_feasible(np.array([t.params[f"u{i}"] for i in range(8)]))


def test_nevergrad_is_told_the_repaired_point() -> None:
    space = LevelSpace(2, n_units=10, total=3)
    opt = levelsearch.make_optimizer("nevergrad-discreteoneplusone", space, seed=0)
    for _ in range(30):
        batch = opt.ask()
        opt.tell(batch, [float(r.levels @ np.arange(10)) for r in batch])
    rec = np.asarray(opt._opt.recommend().value)
    assert space.is_feasible(rec)


@pytest.mark.parametrize("name", ["dp", "greedy"])
@pytest.mark.parametrize(("n_units", "n_levels"), [(4, 100_000), (5000, 2)])
def test_dp_and_greedy_refuse_a_space_with_too_many_unit_levels_at_once(name: str, n_units: int, n_levels: int):
    space = LevelSpace(n_levels, n_units=n_units, total=1000)
    with pytest.raises(ValueError, match=r"^dp and greedy probe every \(unit, level\) pair.*over the limit 4096"):
        levelsearch.make_optimizer(name, space, seed=0)


def test_dp_on_a_space_of_a_hundred_thousand_levels_is_one_cli_line(tmp_path, capsys) -> None:
    from levelsearch.cli import main

    (tmp_path / "run.yaml").write_text(
        "problem: {kind: linear, n_units: 4, n_levels: 100000, total: 1000}\n"
        "optimizer: dp\nbudget: {max_evaluations: 100}\n"
    )
    assert main(["run", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "over the limit 4096" in err[0]
    assert not (tmp_path / "run").exists()
