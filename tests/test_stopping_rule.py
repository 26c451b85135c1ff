"""EvoPress's stopping rule, bounded by work: k generations in a row gaining less than ε on the final
step's data stop the search; off unless asked for; compress turns it on and reports what it saved."""

from __future__ import annotations

import numpy as np
import pytest

from levelsearch import LevelSpace, minimize

SPACE = LevelSpace(2, n_units=12, total=4)
W = np.linspace(0.1, 1.2, 12)


def _flat(levels: np.ndarray) -> float:
    return 1.0


def _linear(levels: np.ndarray) -> float:
    return float(W @ levels)


@pytest.mark.parametrize("name", ["evopress", "evopress-ref"])
def test_a_search_that_stops_gaining_stops_after_patience_generations(name: str) -> None:
    res = minimize(
        _flat,
        SPACE,
        name,
        max_evaluations=2_000,
        options={"patience": 3, "no_repeats": False} if name == "evopress" else {"patience": 3},
    )
    assert res.stopped_by == "optimizer"
    assert res.stop_reason.startswith("stopping rule: 3 generations in a row")
    assert res.n_evaluations < 2_000


def test_the_rule_is_off_by_default_and_a_fixed_budget_runs_to_its_end() -> None:
    res = minimize(_flat, SPACE, "evopress-ref", max_evaluations=300)
    assert res.stopped_by == "max_evaluations" and res.stop_reason == ""


def test_a_search_still_gaining_goes_on() -> None:
    space = LevelSpace(2, n_units=40, total=20)
    w = np.linspace(0.1, 4.0, 40)
    res = minimize(lambda lv: float(w @ lv), space, "evopress-ref", max_evaluations=40, options={"patience": 3})
    assert res.stopped_by == "max_evaluations"


def test_a_generous_threshold_stops_a_converged_linear_search() -> None:
    res = minimize(_linear, SPACE, "evopress-ref", max_evaluations=5_000, options={"patience": 4, "start": "random"})
    assert res.stopped_by == "optimizer"
    assert np.isclose(res.best_value, np.sort(W)[:4].sum())


def test_stopping_rule_options_are_checked() -> None:
    with pytest.raises(ValueError, match="patience must be a positive integer"):
        minimize(_flat, SPACE, "evopress", max_evaluations=10, options={"patience": 0})
    with pytest.raises(ValueError, match=r"min_improvement must be a fraction in \[0, 1\)"):
        minimize(_flat, SPACE, "evopress", max_evaluations=10, options={"patience": 2, "min_improvement": 1.5})


def test_a_resumed_run_stops_where_the_uninterrupted_one_did(tmp_path) -> None:
    opts = {"patience": 3}
    full = minimize(_linear, SPACE, "evopress-ref", max_evaluations=5_000, options=opts, journal=tmp_path / "a.db")
    part = minimize(_linear, SPACE, "evopress-ref", max_evaluations=30, options=opts, journal=tmp_path / "b.db")
    assert part.stopped_by == "max_evaluations"
    again = minimize(_linear, SPACE, "evopress-ref", max_evaluations=5_000, options=opts, journal=tmp_path / "b.db")
    assert again.n_evaluations == full.n_evaluations and again.stop_reason == full.stop_reason


def test_compress_turns_the_rule_on_with_documented_values_and_counts_the_tokens_saved() -> None:
    pytest.importorskip("torch")
    from levelsearch.adapters.run import pipeline

    assert pipeline.stopping_rule({}) == {
        "patience": pipeline.COMPRESS_PATIENCE,
        "min_improvement": pipeline.COMPRESS_MIN_IMPROVEMENT,
    }
    assert pipeline.stopping_rule({"patience": 0}) == {}

    class _Opt:
        generation, max_generations = 10, 400
        stop_reason = "stopping rule: 5 generations in a row ..."

    class _Res:
        cost = 20_000.0

    assert pipeline._tokens_saved(_Res(), _Opt()) == 390 * 2_000.0
    _Opt.stop_reason = "max_generations=400 reached"
    assert pipeline._tokens_saved(_Res(), _Opt()) == 0.0
