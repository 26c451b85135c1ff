"""Per-unit, per-level errors measured with feasible probes (shared by ``dp`` and ``greedy``).

The textbook DP baseline measures ``error(i, l)`` with unit ``i`` at level ``l``
and every other unit at level 0. Under a budget that point is (almost always)
infeasible, and every proposal here must be feasible. So the probes live around
a feasible *base* assignment ``x0`` (the uniform assignment when one meets the
budget, else a seeded random feasible one):

1. evaluate ``x0``;
2. for every unit ``i`` and level ``l != x0[i]``: set unit ``i`` to ``l`` and
   repair the rest back into the budget (a few compensating moves elsewhere);
3. fit the additive model ``f(x) = c + sum_i w[i, x_i]`` (``w[i, x0[i]] = 0``)
   to all probes by least squares.

Soundness: for an additive objective the fit is exact, except that an exact
budget leaves one direction per group undetermined: ``w[i, l] + lambda *
cost(i, l)`` predicts every feasible point equally well, and it shifts every
feasible assignment's total by the same constant, so the knapsack's argmin is
the true optimum whatever ``lambda``. When the compensating moves leave other
directions undetermined (e.g. two units only ever swapped with each other), more
probes (random level switches and single moves of ``x0``) are added until the
model is identified or ``max_extra`` probes are spent. The probes are
``1 + sum_i (K_i - 1)`` evaluations, plus the extras; all count in the budget.
On a non-additive objective the fit is the best additive model around ``x0``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from levelsearch import LevelSpace, Request
from levelsearch.additive import single_unit_probes

__all__ = ["ErrorProber", "MAX_PROBE_COLUMNS"]

#: the most (unit, level) pairs dp and greedy probe: one evaluation each, and the fit's Gram matrix is
#: their square (4,096 pairs: 128 MiB and about a minute of eigendecomposition on two cores)
MAX_PROBE_COLUMNS = 4096


class ErrorProber:
    """Plans feasible probes and fits per-unit, per-level errors from their values.

    Args:
        space: the level space.
        rng: generator for the base point and the repairs.
        fidelity: fidelity of every probe (``None``: the problem's default).
        max_extra: extra probes allowed to identify the model (default ``n_units``).
    """

    def __init__(
        self, space: LevelSpace, rng: np.random.Generator, fidelity: int | None = None, max_extra: int | None = None
    ) -> None:
        pairs = int(space.n_levels.sum()) - space.n_units
        if pairs > MAX_PROBE_COLUMNS:
            raise ValueError(
                f"dp and greedy probe every (unit, level) pair but one level per unit: this space has {pairs}, "
                f"over the limit {MAX_PROBE_COLUMNS}; use evopress or random, or a space with fewer levels"
            )
        self.space = space
        self.rng = rng
        self.fidelity = fidelity
        self.max_extra = space.n_units if max_extra is None else int(max_extra)
        base = space.uniform()
        self.base = space.sample(rng) if base is None else base
        # column index of (unit, level) for every level except the base level
        self._col = -np.ones((space.n_units, int(space.n_levels.max())), dtype=np.int64)
        m = 0
        for i in range(space.n_units):
            for lv in range(int(space.n_levels[i])):
                if lv != self.base[i]:
                    self._col[i, lv] = m
                    m += 1
        self.n_cols = m
        self.points: list[np.ndarray] = []
        self.values: list[float] = []
        self._queue: list[np.ndarray] = [self.base.copy(), *self._single_probes()]
        self._extra_used = 0
        self.done = False

    def _single_probes(self) -> list[np.ndarray]:
        return single_unit_probes(self.space, self.base, self.rng)

    def next_batch(self, size: int) -> list[Request]:
        """Up to ``size`` probes not yet asked (empty once the fit is ready)."""
        if not self._queue and not self.done:
            self._plan_more()
        take, self._queue = self._queue[:size], self._queue[size:]
        return [Request(levels=x.copy(), fidelity=self.fidelity) for x in take]

    def record(self, requests: Sequence[Request], values: Sequence[float]) -> None:
        for r, v in zip(requests, values):
            if math.isfinite(float(v)):  # failed probes carry no information
                self.points.append(r.levels.copy())
                self.values.append(float(v))

    def _design(self) -> np.ndarray:
        a = np.zeros((len(self.points), self.n_cols + 1))
        a[:, -1] = 1.0
        for r, x in enumerate(self.points):
            cols = self._col[np.arange(self.space.n_units), x]
            a[r, cols[cols >= 0]] = 1.0
        return a

    def _gauge(self) -> np.ndarray:
        """Directions that cannot change the argmin: one per exactly budgeted group."""
        sp, costs = self.space, self.space.costs
        vecs = []
        for label, (lo, hi) in sp.group_bounds().items():
            if lo is None or hi is None or hi - lo > 1e-12:
                continue
            v = np.zeros(self.n_cols + 1)
            for i in sp.group_units(label):
                for lv in range(int(sp.n_levels[i])):
                    c = self._col[i, lv]
                    if c >= 0:
                        v[c] = costs[i, lv] - costs[i, self.base[i]]
            if np.any(v):
                vecs.append(v)
        return np.array(vecs).reshape(len(vecs), self.n_cols + 1)

    def identified(self) -> bool:
        """True when the probes pin down the model up to the harmless budget directions."""
        if not self.points:
            return False
        a = self._design()
        # null space of the design from the Gram matrix (a 0/1 design is well conditioned; eigh is much
        # cheaper than a full SVD when there are ~2,000 columns)
        evals, evecs = np.linalg.eigh(a.T @ a)
        tol = max(a.shape) * max(float(evals[-1]), 1.0) * 1e-10
        null = evecs[:, evals <= tol].T
        if null.shape[0] == 0:
            return True
        g = self._gauge()
        if g.shape[0]:
            q, _ = np.linalg.qr(g.T)
            null = null - (null @ q) @ q.T
        return bool(np.linalg.norm(null) < 1e-6)

    def _plan_more(self) -> None:
        if self._extra_used >= self.max_extra or self.identified():
            self.done = True
            return
        k = min(max(8, self.space.n_units // 4), self.max_extra - self._extra_used)
        sp = self.space
        for j in range(k):
            if j % 2 == 0:
                x = sp.switch(self.base, self.rng, 1)
            else:
                x = self.base.copy()
                i = int(self.rng.integers(sp.n_units))
                x[i] = int(self.rng.integers(sp.n_levels[i]))
                x = x if sp.is_feasible(x) else sp.repair(x, self.rng)
            self._queue.append(x)
        self._extra_used += k

    def errors(self) -> np.ndarray:
        """Fitted ``(n_units, max_levels)`` errors, 0 at the base level (least squares, minimum norm)."""
        sp = self.space
        err = np.zeros((sp.n_units, int(sp.n_levels.max())))
        if not self.points:
            return err
        w, *_ = np.linalg.lstsq(self._design(), np.array(self.values), rcond=None)
        for i in range(sp.n_units):
            for lv in range(int(sp.n_levels[i])):
                c = self._col[i, lv]
                if c >= 0:
                    err[i, lv] = w[c]
        return err
