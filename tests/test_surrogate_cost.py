"""The additive surrogate's cost: sparse rows instead of a dense normal matrix, the same fit."""

from __future__ import annotations

import itertools
import tracemalloc

import numpy as np

import levelsearch as ls
from levelsearch.additive import solve_additive
from levelsearch.surrogate import AdditiveSurrogate


def _dense_fit(space: ls.LevelSpace, batches: list[tuple[np.ndarray, np.ndarray, float]], ridge: float) -> np.ndarray:
    """The textbook fit: one-hot features, each batch centred, ridge normal equations solved densely."""
    off = np.concatenate([[0], np.cumsum(space.n_levels)[:-1]])
    p = int(space.n_levels.sum())
    a, b = np.zeros((p, p)), np.zeros(p)
    for lv, y, w in batches:
        x = np.zeros((lv.shape[0], p))
        x[np.repeat(np.arange(lv.shape[0]), lv.shape[1]), (off[None, :] + lv).ravel()] = 1.0
        x, yc = x - x.mean(axis=0), y - y.mean()
        a += w * x.T @ x
        b += w * x.T @ yc
    lam = ridge * np.diag(a).mean()
    return np.linalg.solve(a + lam * np.eye(p), b)


def test_the_sparse_fit_equals_the_dense_normal_equations() -> None:
    space = ls.LevelSpace([3, 2, 4, 2, 3, 2], total=7)
    rng = np.random.default_rng(0)
    sur = AdditiveSurrogate(space, decay=1.0)
    batches = []
    parent = space.sample(rng)
    for k in range(12):
        lv = np.stack([parent] + [space.switch(parent, rng, 1 + k % 3) for _ in range(6)])
        y = rng.standard_normal(len(lv))
        w = 0.5 + 0.5 * (k % 2)
        batches.append((lv, y, w))
        sur.add_batch(lv, y, w)
    sur.fit(exact=True)
    want = _dense_fit(space, batches, sur.ridge)
    cand = np.stack([space.sample(rng) for _ in range(20)])
    off = np.concatenate([[0], np.cumsum(space.n_levels)[:-1]])
    expect = want[off[None, :] + cand].sum(axis=1)
    got = sur.predict(cand)
    assert np.allclose(got - got.mean(), expect - expect.mean(), atol=1e-8)


def test_a_surrogate_of_twenty_thousand_units_needs_no_dense_normal_matrix() -> None:
    # a dense (Σ K_i)² normal matrix would take 40,000² doubles (12.8 GB)
    space = ls.LevelSpace(2, n_units=20_000, total=5_000)
    rng = np.random.default_rng(1)
    parent = space.sample(rng)
    tracemalloc.start()
    sur = AdditiveSurrogate(space)
    for _ in range(3):
        lv = np.stack([parent] + [space.switch(parent, rng, 2) for _ in range(8)])
        sur.add_batch(lv, rng.random(len(lv)))
        sur.fit()
        sur.age()
    assert sur.predict(lv).shape == (9,)
    assert np.isfinite(sur.unit_table()).all()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 100 * 2**20


def test_ageing_weighs_old_batches_down_like_scaling_them() -> None:
    space = ls.LevelSpace(2, n_units=6, total=3)
    rng = np.random.default_rng(2)
    lv1 = np.stack([space.sample(rng) for _ in range(5)])
    lv2 = np.stack([space.sample(rng) for _ in range(5)])
    y1, y2 = rng.random(5), rng.random(5)
    aged = AdditiveSurrogate(space, decay=0.5)
    aged.add_batch(lv1, y1)
    aged.age()
    aged.add_batch(lv2, y2)
    aged.fit(exact=True)
    scaled = AdditiveSurrogate(space, decay=1.0)
    scaled.add_batch(lv1, y1, 0.5)
    scaled.add_batch(lv2, y2)
    scaled.fit(exact=True)
    assert np.allclose(aged.unit_table(), scaled.unit_table())


def test_the_two_level_knapsack_shortcut_is_exact() -> None:
    rng = np.random.default_rng(3)
    checked = 0
    for _ in range(150):
        n = int(rng.integers(1, 9))
        c0, c1 = sorted(rng.choice(5, size=2, replace=False).tolist())
        total = float(n * c0 + rng.integers(0, n + 1) * (c1 - c0) + rng.integers(0, 2))
        try:
            space = ls.LevelSpace(2, n_units=n, costs=np.tile([c0, c1], (n, 1)).astype(float), total=total, tol=2.0)
        except ValueError:
            continue
        err = rng.standard_normal((n, 2))
        levels, value = solve_additive(space, err)
        best = min(
            float(err[np.arange(n), list(x)].sum())
            for x in itertools.product([0, 1], repeat=n)
            if space.is_feasible(np.array(x))
        )
        assert space.is_feasible(levels) and abs(value - best) < 1e-9
        checked += 1
    assert checked > 50


def test_the_knapsack_of_a_thousand_two_level_units_is_fast() -> None:
    # the DP walks 1,000 units x 251 totals in Python; the shortcut sorts once
    space = ls.LevelSpace(2, n_units=1000, total=250)
    err = np.random.default_rng(4).random((1000, 2))
    levels, value = solve_additive(space, err)
    assert levels.sum() == 250
    gain = np.sort(err[:, 1] - err[:, 0])
    assert np.isclose(value, err[:, 0].sum() + gain[:250].sum())
