"""Property-based inputs to the public API: any input either works correctly or is one ``ValueError`` line.

Hypothesis draws what a user might hand over (numbers of every kind, NaN and infinities, ragged and 2-D
arrays, negative and fractional levels, absurd sizes and options). Nothing may raise another exception
type, print a multi-line message, hang, or return a wrong value.
"""

from __future__ import annotations

import math
import resource
import signal
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from levelsearch import LevelSpace, minimize

pytestmark = pytest.mark.skipif(not __import__("os").path.exists("/proc/self/statm"), reason="needs Linux's /proc")

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)

numbers = st.one_of(
    st.integers(-3, 12),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.5, 1.5, -1.0, 1e308, -1e308, True, False]),
)
anything = st.one_of(numbers, st.none(), st.text(max_size=3), st.lists(numbers, max_size=4))


@contextmanager
def _within(seconds: int, memory: int = 2 << 30):
    """Fail (instead of hanging CI or waking the OOM killer) when the body runs longer than ``seconds`` or asks
    for more than ``memory`` bytes beyond what the process holds: a ``TimeoutError`` or ``MemoryError``, which
    the properties count as failures."""

    def on_alarm(*_: Any) -> None:
        raise TimeoutError(f"took longer than {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    limits = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (_address_space() + memory, limits[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, limits)
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _address_space() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * resource.getpagesize()


def _one_line(exc: BaseException) -> None:
    msg = str(exc)
    assert msg and "\n" not in msg, f"not one line: {msg!r}"


def _space_or_error(**kwargs: Any) -> LevelSpace | None:
    try:
        with _within(20):
            return LevelSpace(**kwargs)
    except ValueError as exc:
        _one_line(exc)
        return None


@FUZZ
@given(
    n_levels=st.one_of(numbers, st.lists(numbers, min_size=0, max_size=6)),
    n_units=st.one_of(st.none(), numbers),
    total=st.one_of(st.none(), numbers),
    tol=numbers,
)
def test_any_level_space_arguments_build_a_space_or_raise_one_value_error_line(n_levels, n_units, total, tol):
    space = _space_or_error(n_levels=n_levels, n_units=n_units, total=total, tol=tol)
    if space is not None:
        assert space.n_units >= 1 and np.all(space.n_levels >= 1)


@FUZZ
@given(costs=st.lists(st.lists(numbers, min_size=1, max_size=3), min_size=1, max_size=4), total=numbers)
def test_any_costs_build_a_space_with_finite_costs_or_raise_one_line(costs, total):
    n_levels = [len(c) for c in costs]
    space = _space_or_error(n_levels=n_levels, costs=costs, total=total, tol=abs(total) if _finite(total) else 0)
    if space is not None:
        for i, k in enumerate(space.n_levels.tolist()):  # costs are nan-padded past a unit's levels
            assert np.all(np.isfinite(space.costs[i, :k]))
        assert math.isfinite(space.cost(np.asarray(space.max_level)))  # the largest total does not overflow


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and abs(x) < 1e300


SPACE = LevelSpace([3, 2, 4, 2], costs=[[0, 1, 2], [0, 5], [0, 1, 2, 3], [0, 4]], total=6, tol=2)


@FUZZ
@given(
    levels=st.one_of(
        st.lists(numbers, min_size=0, max_size=6),
        st.lists(st.lists(st.integers(0, 1), min_size=4, max_size=4), min_size=1, max_size=3),
        anything,
    )
)
def test_cost_and_feasibility_of_any_levels_are_right_or_one_value_error_line(levels):
    try:
        arr = np.asarray(levels)
    except (ValueError, OverflowError, TypeError):  # ragged: numpy itself refuses
        arr = None
    try:
        cost = SPACE.cost(levels)
    except ValueError as exc:
        _one_line(exc)
        assert not SPACE.is_feasible(levels)
        return
    # accepted: exactly a vector of integers in range, and the cost is its sum of costs
    assert arr is not None and arr.shape == (4,)
    lv = [int(x) for x in arr.tolist()]
    assert all(float(x) == int(x) and not isinstance(x, bool) for x in arr.tolist())
    assert all(0 <= v <= m for v, m in zip(lv, SPACE.max_level.tolist()))
    assert cost == sum(SPACE.costs[i, v] for i, v in enumerate(lv))


@FUZZ
@given(
    option=st.sampled_from(["offspring", "max_switches", "init_candidates", "max_generations", "screen", "explore"]),
    value=anything,
    seed=st.one_of(st.integers(-5, 2**40), numbers),
    max_evaluations=st.one_of(st.integers(-2, 300), numbers),
)
def test_any_evopress_option_seed_and_budget_run_or_raise_one_value_error_line(option, value, seed, max_evaluations):
    space = LevelSpace(2, n_units=10, total=3)
    weights = np.arange(10.0)
    try:
        with _within(30):
            result = minimize(
                lambda lv: float(weights @ lv),
                space,
                "evopress",
                options={option: value},
                seed=seed,
                max_evaluations=max_evaluations,
            )
    except ValueError as exc:
        _one_line(exc)
        return
    assert isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0, f"seed {seed!r} was accepted"
    assert space.is_feasible(result.best_levels)
    assert result.best_value == float(weights @ result.best_levels)
    assert result.n_evaluations <= max_evaluations


@pytest.mark.parametrize("optimizer", ["evopress", "evopress-ref"])
def test_a_band_that_holds_the_all_lowest_assignment_is_searched(optimizer):
    """Totals 0..4 allowed: the optimum is not the start, and the search must find it."""
    space = LevelSpace(3, n_units=8, total=4, tol=4)
    weights = np.array([3.0, -1.0, 2.0, -2.0, 5.0, 1.0, -3.0, 4.0])
    result = minimize(lambda lv: float(weights @ lv), space, optimizer, max_evaluations=600, seed=0)
    assert result.n_evaluations > 1
    assert math.isfinite(result.best_value)
    optimum = min(float(weights @ lv) for lv in space.enumerate_feasible())
    assert optimum == -10.0  # units 6 and 3 at level 2
    assert result.best_value == optimum
    assert space.is_feasible(result.best_levels)
