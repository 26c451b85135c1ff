"""Synthetic problems: their declared optima are right, and they behave as documented."""

from __future__ import annotations

import numpy as np
import pytest

import levelsearch as ls
from levelsearch import make_problem, minimize, solve_additive


def _brute_force(problem):
    pts = problem.space.enumerate_feasible()
    vals = [problem.evaluate(p) for p in pts]
    return float(min(vals))


@pytest.mark.parametrize("k, total", [(2, 3), (3, 7), (4, 5)])
def test_linear_optimum_equals_exhaustive_search(k, total):
    p = make_problem({"kind": "linear", "n_units": 7, "n_levels": k, "total": total, "seed": 3})
    assert p.optimum == pytest.approx(_brute_force(p))
    assert p.space.is_feasible(p.optimum_levels)


def test_interacting_optimum_by_milp_equals_exhaustive_search():
    p = make_problem({"kind": "interacting", "n_units": 14, "n_levels": 2, "total": 4, "seed": 1})
    assert p._milp()[1] == pytest.approx(_brute_force(p))


def test_interacting_problem_is_not_solved_by_additive_dp():
    p = make_problem({"kind": "interacting", "n_units": 16, "n_levels": 2, "total": 5, "seed": 0})
    # the additive view: each unit's error when it alone is at level 1
    zero = np.zeros(16, dtype=np.int64)
    single = np.array([p.evaluate(np.eye(16, dtype=np.int64)[i]) - p.evaluate(zero) for i in range(16)])
    dp_levels, _ = solve_additive(p.space, np.stack([np.zeros(16), single], axis=1))
    assert p.evaluate(dp_levels) > p.optimum + 1e-9


def test_evopress_finds_the_interacting_optimum_on_a_small_instance():
    p = make_problem({"kind": "interacting", "n_units": 16, "n_levels": 2, "total": 5, "seed": 0})
    res = minimize(p, max_evaluations=3000, seed=0)
    assert res.best_value == pytest.approx(p.optimum)


def test_noisy_values_scatter_less_at_higher_fidelity_around_the_true_value():
    p = make_problem({"kind": "noisy", "base": {"kind": "linear", "n_units": 16, "total": 4}, "sigma": 10.0})
    x = p.space.sample(np.random.default_rng(0))
    lo = np.array([p.evaluate(x, 64, s) for s in range(200)])
    hi = np.array([p.evaluate(x, 16384, s) for s in range(200)])
    assert hi.std() < lo.std() / 4
    assert abs(hi.mean() - p.true_value(x)) < 0.05
    assert p.optimum == p.base.optimum


def test_noisy_evaluations_are_reproducible_from_the_sample_seed():
    p = make_problem({"kind": "noisy"})
    x = p.space.sample(np.random.default_rng(1))
    assert p.evaluate(x, 1024, 7) == p.evaluate(x, 1024, 7)
    assert p.evaluate(x, 1024, 7) != p.evaluate(x, 1024, 8)


def test_residual_net_dense_net_has_zero_divergence_and_dropping_hurts():
    p = make_problem({"kind": "residual-net", "n_blocks": 6, "width": 16, "total": 2, "max_fidelity": 128})
    zero = np.zeros(6, dtype=np.int64)
    assert p.evaluate(zero) == pytest.approx(0.0, abs=1e-12)
    assert p.evaluate(np.array([1, 1, 0, 0, 0, 0])) > 0


def test_residual_net_prune_mode_has_graded_levels():
    p = make_problem({"kind": "residual-net", "n_blocks": 4, "width": 16, "mode": "prune", "n_levels": 4, "total": 3})
    assert p.space.n_levels.tolist() == [4] * 4
    mild = p.evaluate(np.array([1, 1, 1, 0]))
    harsh = p.evaluate(np.array([3, 0, 0, 0]))
    assert mild > 0 and harsh > 0


def test_residual_net_optimum_is_exhaustive_for_small_nets():
    p = make_problem({"kind": "residual-net", "n_blocks": 8, "width": 8, "total": 3, "max_fidelity": 64})
    assert p.optimum == pytest.approx(_brute_force(p))


def test_unknown_problem_kind_and_parameter_are_clear_errors():
    with pytest.raises(ValueError, match="unknown problem kind 'nope'"):
        make_problem({"kind": "nope"})
    with pytest.raises(ValueError, match="has no parameter 'units'"):
        make_problem({"kind": "linear", "units": 3})


def test_all_builtin_problems_are_registered():
    assert {"linear", "interacting", "noisy", "residual-net"} <= set(ls.available_problems())


# ------------------------------------------------------------------ sizes are bounded, in one line
@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"kind": "residual-net", "width": 10**6}, "width must be an integer in 1..4096"),
        ({"kind": "residual-net", "width": 4096, "n_blocks": 64}, "over the limit"),
        ({"kind": "residual-net", "n_blocks": 10**9}, "n_blocks must be an integer"),
        ({"kind": "residual-net", "max_fidelity": 10**9}, "max_fidelity must be an integer"),
        ({"kind": "residual-net", "mode": "prune", "n_levels": 10**6}, "n_levels must be an integer in 1..64"),
        ({"kind": "residual-net", "max_sparsity": 1.5}, "max_sparsity"),
        ({"kind": "linear", "n_units": 10**9}, "n_units must be an integer in 1..1000000"),
        ({"kind": "linear", "n_units": 1000, "n_levels": 100_000}, "n_units x n_levels = 100000000 is over the limit"),
        ({"kind": "linear", "n_units": 2.5}, "n_units must be an integer"),
        ({"kind": "interacting", "n_levels": 10**9}, "n_levels must be an integer"),
        ({"kind": "interacting", "random_pairs": 10**12}, "random_pairs"),
        ({"kind": "interacting", "coupling": float("nan")}, "coupling"),
        ({"kind": "noisy", "sigma": float("inf")}, "sigma must be a finite number"),
        ({"kind": "noisy", "max_fidelity": 0}, "max_fidelity must be an integer"),
    ],
)
def test_a_problem_too_large_or_malformed_is_one_value_error_naming_the_parameter(config, words):
    with pytest.raises(ValueError, match="^[^\n]*$") as info:
        make_problem(config)
    assert words in str(info.value)
    assert str(info.value).startswith(config["kind"])


def test_the_largest_allowed_table_builds(tmp_path):
    p = make_problem({"kind": "linear", "n_units": 4, "n_levels": 100_000, "total": 10})
    assert p.errors.shape == (4, 100_000)
