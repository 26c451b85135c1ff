"""EvoPress draws its level-switch mutants with block-drawn random numbers: the same moves as
``LevelSpace.switch``, without a scalar draw per try."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

import levelsearch as ls
from levelsearch.evopress import _Mutator


class _CountingRng:
    """A generator that counts the calls made to it."""

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng, self.calls = rng, 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._rng, name)
        if not callable(attr):
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return attr(*args, **kwargs)

        return counted


def test_a_generation_draws_its_random_numbers_in_a_few_blocks() -> None:
    space = ls.LevelSpace(2, n_units=1000, total=250)
    opt = ls.EvoPress(space, seed=0)
    rng = np.random.default_rng(0)
    for _ in range(3):
        batch = opt.ask()
        opt.tell(batch, rng.random(len(batch)).tolist())
    counting = _CountingRng(opt.rng)
    opt.rng = counting  # type: ignore[assignment]
    opt._mutator.rng = counting  # type: ignore[assignment]
    batch = opt.ask()  # 64 mutants screened down to 16 offspring
    assert len(batch) >= 17  # the parent, maybe a model jump, 16 offspring
    assert counting.calls < 12


def test_mutants_keep_the_budget_and_move_one_unit_up_and_one_down_per_switch() -> None:
    space = ls.LevelSpace(4, n_units=50, total=75)
    rng = np.random.default_rng(1)
    parent = space.sample(rng)
    mut = _Mutator(space, rng)
    assert mut.fast
    for child in mut.children(parent, 300, 3):
        assert space.is_feasible(child)
        diff = child - parent
        assert diff.sum() == 0 and diff[diff > 0].sum() <= 3


def test_a_single_switch_chooses_among_the_possible_pairs_uniformly() -> None:
    space = ls.LevelSpace(2, n_units=6, total=3)
    parent = np.array([1, 1, 1, 0, 0, 0])
    mut = _Mutator(space, np.random.default_rng(2))
    pairs = Counter()
    for child in mut.children(parent, 9000, 1):
        (up,), (down,) = np.flatnonzero(child > parent), np.flatnonzero(child < parent)
        pairs[int(up), int(down)] += 1
    assert set(pairs) == {(i, j) for i in (3, 4, 5) for j in (0, 1, 2)}
    assert all(800 < c < 1200 for c in pairs.values())


def test_a_rare_pair_is_found_when_chance_misses_it() -> None:
    # one unit of 400 can go up: 32 random tries miss it most of the time, the space's own choice finds it
    space = ls.LevelSpace(2, n_units=400, total=399)
    parent = np.ones(400, dtype=np.int64)
    parent[7] = 0
    for child in _Mutator(space, np.random.default_rng(3)).children(parent, 20, 1):
        assert space.is_feasible(child) and child[7] == 1


def test_spaces_with_a_budget_band_mutate_through_the_space() -> None:
    space = ls.LevelSpace(3, n_units=20, total=20, tol=3)
    rng = np.random.default_rng(4)
    mut = _Mutator(space, rng)
    assert not mut.fast
    parent = space.sample(rng)
    assert all(space.is_feasible(c) for c in mut.children(parent, 50, 3))
