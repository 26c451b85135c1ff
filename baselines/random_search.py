"""``random``: independent random feasible assignments (``space.sample``), the floor every method must beat."""

from __future__ import annotations

import math
from collections.abc import Sequence

from levelsearch import LevelSpace, Optimizer, Request

__all__ = ["RandomSearch"]


class RandomSearch(Optimizer):
    """Random feasible search (``random``): each candidate is ``space.sample(rng)``.

    ``space.sample`` draws levels uniformly and repairs them into the budget, so
    the distribution is not exactly uniform over the feasible set.

    Args:
        space: the level space.
        seed: seed of the samples.
        batch: candidates per ask (default 16).
        fidelity: fidelity of every evaluation (default: the problem's).
    """

    def __init__(self, space: LevelSpace, *, seed: int = 0, batch: int = 16, fidelity: int | None = None) -> None:
        super().__init__(space, seed=seed)
        if int(batch) < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.batch = int(batch)
        self.fidelity = fidelity

    def ask(self) -> list[Request]:
        return [Request(levels=self.space.sample(self.rng), fidelity=self.fidelity) for _ in range(self.batch)]

    def tell(self, requests: Sequence[Request], values: Sequence[float]) -> None:
        self._track(requests, [float(v) if math.isfinite(float(v)) else math.inf for v in values])
