"""``dp``: dynamic programming under the additivity assumption, and ``greedy``: sensitivity fill.

Both first measure per-unit, per-level errors with feasible probes (see
:mod:`levelsearch.baselines.probing`; every probe counts in the budget), then

- ``dp`` solves the budgeted knapsack on those errors exactly
  (:func:`levelsearch.solve_additive`) and evaluates the solution; with
  ``local_search=True`` it then spends the rest of the budget on first-improvement
  level switches around the best point (1 switch per candidate);
- ``greedy`` starts every unit at its cheapest level and, group by group, raises
  the unit whose next level adds the least error per unit of cost until the
  group reaches its budget (then repairs, for budgets a greedy step overshoots),
  and evaluates that point.

Without local search both stop after their last proposal (``stop()`` is true).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence

import numpy as np

from levelsearch import LevelSpace, Optimizer, Request, solve_additive

from .probing import ErrorProber

__all__ = ["DynamicProgramming", "GreedyFill", "greedy_fill"]


class _ProbeThenSolve(Optimizer):
    def __init__(
        self,
        space: LevelSpace,
        *,
        seed: int = 0,
        batch: int = 32,
        fidelity: int | None = None,
        max_extra_probes: int | None = None,
        local_search: bool = False,
    ) -> None:
        super().__init__(space, seed=seed)
        if int(batch) < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.batch = int(batch)
        self.fidelity = fidelity
        self.local_search = bool(local_search)
        self.prober = ErrorProber(space, self.rng, fidelity=fidelity, max_extra=max_extra_probes)
        self.errors: np.ndarray | None = None
        self.solution: np.ndarray | None = None
        self._phase = "probe"
        self._pending: list[Request] = []

    @abc.abstractmethod
    def _solve(self, errors: np.ndarray) -> np.ndarray:
        """A feasible assignment from the probed per-unit, per-level errors."""

    def ask(self) -> list[Request]:
        if self._phase == "probe":
            reqs = self.prober.next_batch(self.batch)
            if reqs:
                self._pending = reqs
                return reqs
            self.errors = self.prober.errors()
            self.solution = self._solve(self.errors)
            self._phase = "solution"
            self._pending = [Request(levels=self.solution.copy(), fidelity=self.fidelity)]
            return self._pending
        if self._phase == "local":
            base = self._best_levels if self._best_levels is not None else self.solution
            assert base is not None
            self._pending = [
                Request(levels=self.space.switch(base, self.rng, 1), fidelity=self.fidelity) for _ in range(1)
            ]
            return self._pending
        return []

    def tell(self, requests: Sequence[Request], values: Sequence[float]) -> None:
        vals = [float(v) if math.isfinite(float(v)) else math.inf for v in values]
        self._track(requests, vals)
        if self._phase == "probe":
            self.prober.record(requests, vals)
        elif self._phase == "solution":
            self._phase = "local" if self.local_search else "done"

    def stop(self) -> bool:
        return self._phase == "done"


class DynamicProgramming(_ProbeThenSolve):
    """Probe per-unit errors, solve the additive knapsack exactly, optionally refine by local search (``dp``).

    Exact on additive objectives (the ``linear`` problem) once its probes are
    evaluated: about ``1 + sum_i (n_levels_i - 1)`` evaluations.

    Args:
        space: the level space (costs must be commensurable for the DP).
        seed: seed of the base point, the repairs and the local search.
        batch: probes per ask (default 32).
        fidelity: fidelity of every evaluation (default: the problem's).
        max_extra_probes: probes beyond the single-unit ones to identify the model (default ``n_units``).
        local_search: after the DP point, spend the rest of the budget on
            first-improvement single level switches (default ``False``).
    """

    def _solve(self, errors: np.ndarray) -> np.ndarray:
        levels, _ = solve_additive(self.space, errors)
        return levels


class GreedyFill(_ProbeThenSolve):
    """Probe per-unit errors, then fill each group's budget by cheapest error per cost (``greedy``).

    Same probes and options as :class:`DynamicProgramming`; the fill is exact
    for convex errors with equal costs and a heuristic otherwise.
    """

    def _solve(self, errors: np.ndarray) -> np.ndarray:
        return greedy_fill(self.space, errors, self.rng)


def greedy_fill(space: LevelSpace, errors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Raise levels one step at a time by least added error per added cost until every group meets its budget."""
    costs = space.costs
    lv = np.array([int(np.nanargmin(costs[i, : space.n_levels[i]])) for i in range(space.n_units)], dtype=np.int64)
    for label, (lo, hi) in space.group_bounds().items():
        if lo is None:
            continue
        units = space.group_units(label)
        total = float(costs[units, lv[units]].sum())
        while total < lo - 1e-9:
            best, best_ratio = -1, math.inf
            for u in units:
                if lv[u] >= space.max_level[u]:
                    continue
                dc = float(costs[u, lv[u] + 1] - costs[u, lv[u]])
                if dc <= 0 or (hi is not None and total + dc > hi + 1e-9 and best >= 0):
                    continue
                ratio = float(errors[u, lv[u] + 1] - errors[u, lv[u]]) / dc
                if ratio < best_ratio:
                    best, best_ratio = int(u), ratio
            if best < 0:
                break
            total += float(costs[best, lv[best] + 1] - costs[best, lv[best]])
            lv[best] += 1
    return lv if space.is_feasible(lv) else space.repair(lv, rng)
