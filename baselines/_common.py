"""What every library-backed baseline shares: encodings, repair and failure penalties.

Neither Optuna nor Nevergrad can hold an equality constraint on the total cost,
so a library proposes a *raw* point and the baseline turns it into a feasible
assignment with one of two encodings:

``"repair"`` (any space)
    one integer per unit (the level); the point is made feasible with
    ``space.repair(levels, rng)``, which moves a few random units one level at a
    time until every group meets its budget.
``"rank"`` (binary spaces: every unit has exactly 2 levels)
    one continuous score per unit; in each group the units with the highest
    scores go to level 1 until the group reaches its budget (top-k for equal
    costs). Every score vector decodes to a feasible point, nothing is repaired.

The driver counts every evaluation towards the budget, repaired or not.

Duplicates: a decoded point that was already evaluated (or is already in the
batch) is replaced by a random level switch of it, up to 8 times. The driver
would answer a duplicate from its cache for free, but a converged model (GP,
TPE) then proposes the same point forever and the run stalls without spending
its budget. The library is told the point actually evaluated, as for repair.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from levelsearch import LevelSpace, Optimizer, Request

__all__ = ["EncodedBaseline", "decode_rank", "ENCODINGS"]

ENCODINGS = ("repair", "rank")


def decode_rank(space: LevelSpace, scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Binary levels from continuous scores: per group, the highest scores go to level 1 until the budget is met.

    Ties are broken by unit index (a stable sort), so equal scores decode deterministically.
    """
    lv = np.zeros(space.n_units, dtype=np.int64)
    costs = space.costs
    for label, (lo, _hi) in space.group_bounds().items():
        if lo is None:
            continue  # an unconstrained group keeps every unit at level 0 unless repair says otherwise
        units = space.group_units(label)
        order = units[np.argsort(-np.asarray(scores)[units], kind="stable")]
        total = float(costs[units, 0].sum())
        for u in order:
            if total >= lo - 1e-9:
                break
            lv[u] = 1
            total += float(costs[u, 1] - costs[u, 0])
    if not space.is_feasible(lv):
        lv = space.repair(lv, rng)
    return lv


class EncodedBaseline(Optimizer):
    """An ask/tell optimizer whose library proposes raw points that are decoded into feasible levels.

    Subclasses implement :meth:`_ask_raw` (a library candidate and its raw
    vector) and :meth:`_tell_raw`. ``inf``/NaN values (failed evaluations) are
    passed to :meth:`_tell_raw` as ``None``; :meth:`penalty` gives a finite
    stand-in for libraries that need one.

    Args:
        space: the level space.
        seed: seed of the library and of the repair.
        encoding: ``"repair"`` or ``"rank"`` (binary spaces only); see the module docstring.
        batch: candidates per ask (default 1: the libraries are sequential).
    """

    def __init__(self, space: LevelSpace, *, seed: int = 0, encoding: str = "repair", batch: int = 1) -> None:
        super().__init__(space, seed=seed)
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
        if encoding == "rank" and not np.all(space.n_levels == 2):
            raise ValueError("encoding='rank' needs every unit to have exactly 2 levels; use encoding='repair'")
        if int(batch) < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.encoding = encoding
        self.batch = int(batch)
        self._pending: list[tuple[Any, np.ndarray, np.ndarray]] = []
        self._worst = -math.inf
        self._seen: set[bytes] = set()

    # ----------------------------------------------------------- to implement
    @abc.abstractmethod
    def _ask_raw(self) -> tuple[Any, np.ndarray]:
        """The library's next proposal: ``(handle for tell, raw point in the library's encoding)``."""

    @abc.abstractmethod
    def _tell_raw(self, handle: Any, raw: np.ndarray, levels: np.ndarray, changed: bool, value: float | None) -> None:
        """Report ``value`` of the repaired ``levels`` (``changed``: repair moved the point) to the library."""

    # ------------------------------------------------------------------ shared
    def decode(self, raw: np.ndarray) -> np.ndarray:
        """The feasible assignment a raw library point stands for."""
        if self.encoding == "rank":
            return decode_rank(self.space, np.asarray(raw, dtype=float), self.rng)
        lv = np.clip(np.rint(np.asarray(raw, dtype=float)), 0, self.space.max_level).astype(np.int64)
        return lv if self.space.is_feasible(lv) else self.space.repair(lv, self.rng)

    def penalty(self) -> float:
        """A finite value worse than everything seen, for libraries that cannot take ``inf``."""
        if not math.isfinite(self._worst):
            return 1e12
        return self._worst + abs(self._worst) + 1.0

    def ask(self) -> list[Request]:
        self._pending = []
        batch_keys: set[bytes] = set()
        for _ in range(self.batch):
            handle, raw = self._ask_raw()
            lv = self.decode(raw)
            for _ in range(8):
                if lv.tobytes() not in self._seen and lv.tobytes() not in batch_keys:
                    break
                lv = self.space.switch(lv, self.rng, 1)
            batch_keys.add(lv.tobytes())
            self._pending.append((handle, np.asarray(raw), lv))
        return [Request(levels=lv.copy()) for _, _, lv in self._pending]

    def tell(self, requests: Sequence[Request], values: Sequence[float]) -> None:
        vals = [float(v) for v in values]
        self._track(requests, [v if math.isfinite(v) else math.inf for v in vals])
        for (handle, raw, lv), v in zip(self._pending, vals):
            ok = math.isfinite(v)
            if ok:
                self._worst = max(self._worst, v)
            self._seen.add(lv.tobytes())
            if self.encoding == "repair":
                changed = not np.array_equal(lv, np.clip(np.rint(raw.astype(float)), 0, self.space.max_level))
            else:
                changed = not np.array_equal(lv, decode_rank(self.space, raw, np.random.default_rng(0)))
            self._tell_raw(handle, raw, lv, changed, v if ok else None)
        self._pending = []
