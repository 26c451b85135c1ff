"""The additive surrogate's bookkeeping: rows appended in place, faded batches dropped, predictions by change."""

from __future__ import annotations

import numpy as np

import levelsearch as ls
from levelsearch.surrogate import AdditiveSurrogate


def _batch(space: ls.LevelSpace, rng: np.random.Generator, k: int) -> tuple[np.ndarray, np.ndarray]:
    parent = space.sample(rng)
    lv = np.stack([parent] + [space.switch(parent, rng, 1 + k % 3) for _ in range(6)] + [space.sample(rng)])
    return lv, rng.standard_normal(len(lv))


def test_a_fit_does_not_copy_the_rows_told_before(monkeypatch) -> None:
    # rows are appended in place (buffers doubling when full): 300 batches and fits copy a few times the rows'
    # entries in all, not every row again at every fit
    space = ls.LevelSpace(2, n_units=200, total=50)
    rng = np.random.default_rng(0)
    batches = [_batch(space, rng, k) for k in range(300)]
    copied = [0]
    concatenate = np.concatenate

    def counting(arrays, *args, **kwargs):  # type: ignore[no-untyped-def]
        out = concatenate(arrays, *args, **kwargs)
        copied[0] += out.size
        return out

    monkeypatch.setattr(np, "concatenate", counting)
    sur = AdditiveSurrogate(space)
    for lv, y in batches:
        sur.add_batch(lv, y)
        sur.fit()
        sur.age()
    monkeypatch.undo()
    levels_told = sum(lv.size for lv, _ in batches)  # more than the rows' nonzero entries
    assert copied[0] < levels_told, copied[0]


def test_a_fit_after_batches_faded_equals_one_told_only_the_live_batches() -> None:
    space = ls.LevelSpace([3, 2, 4, 2, 3, 2, 2, 3], total=8)
    rng = np.random.default_rng(1)
    batches = [_batch(space, rng, k) for k in range(90)]
    aged = AdditiveSurrogate(space, decay=0.5)
    for lv, y in batches:
        aged.add_batch(lv, y)
        aged.fit()  # drops the faded batches (0.5^40 < 1e-12) and compacts the buffers as it goes
        aged.age()
    aged._dirty = True
    aged.fit(exact=True)
    live = len(aged._batch_weight)
    assert live < 50
    fresh = AdditiveSurrogate(space, decay=1.0)
    for age, (lv, y) in zip(range(live, 0, -1), batches[-live:]):
        fresh.add_batch(lv, y, 0.5 ** (age - 1))
    fresh.fit(exact=True)
    assert np.allclose(aged.unit_table(), fresh.unit_table(), atol=1e-9)


def test_predictions_of_assignments_far_apart_are_their_per_unit_sums() -> None:
    space = ls.LevelSpace(4, n_units=30, total=45)
    rng = np.random.default_rng(2)
    sur = AdditiveSurrogate(space, prior=rng.random((30, 4)))
    for k in range(10):
        sur.add_batch(*_batch(space, rng, k))
    sur.fit(exact=True)
    cand = np.stack([space.sample(rng) for _ in range(40)])
    table = sur.unit_table()
    expect = table[np.arange(30)[None, :], cand].sum(axis=1)
    got = sur.predict(cand)
    assert np.allclose(got - got[0], expect - expect[0], atol=1e-12)
