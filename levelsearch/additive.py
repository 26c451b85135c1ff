"""Exact optimum of an *additive* objective under the space's budget (knapsack DP).

Used for the known optimum of the ``linear`` synthetic problem and by the
``dp`` baseline, which assumes per-unit errors add up.
"""

from __future__ import annotations

import numpy as np

from .space import LevelSpace, _integer_scale

__all__ = ["solve_additive", "single_unit_probes"]


def solve_additive(space: LevelSpace, errors: np.ndarray) -> tuple[np.ndarray, float]:
    """Minimise ``sum_i errors[i, levels[i]]`` subject to the space's budget, exactly.

    Args:
        space: the level space; costs must be commensurable (integers after
            scaling by a common step), which holds for levels, parameter counts
            and bits.
        errors: ``(n_units, max_levels)`` per-unit, per-level errors (entries past
            a unit's level count are ignored).

    Returns:
        ``(levels, value)`` of an optimal feasible assignment.

    Raises:
        ValueError: if the costs are not commensurable or the DP table would be
            too large (more than 5e8 cells).
    """
    err = np.asarray(errors, dtype=float)
    n = space.n_units
    if err.ndim != 2 or err.shape[0] != n or err.shape[1] < int(space.n_levels.max()):
        raise ValueError(f"errors must have shape ({n}, {int(space.n_levels.max())}), got {err.shape}")
    out = np.zeros(n, dtype=np.int64)
    total = 0.0
    costs = space.costs
    for label, (lo, hi) in space.group_bounds().items():
        units = space.group_units(label)
        fast = None if hi is None else _two_level_same_costs(costs[units], err[units], space.n_levels[units], lo, hi)
        if fast is not None:  # O(n log n) instead of the DP's O(n · totals)
            out[units], value = fast
            total += value
            continue
        rows = [costs[i, : space.n_levels[i]] for i in units]
        e_rows = [err[i, : space.n_levels[i]] for i in units]
        if hi is None:
            pick = np.array([int(np.nanargmin(r)) for r in e_rows])
            out[units] = pick
            total += float(sum(r[p] for r, p in zip(e_rows, pick)))
            continue
        assert lo is not None
        scaled = _integer_scale(rows)
        if scaled is None:
            raise ValueError(f"costs of group {label!r} are not commensurable; the knapsack DP needs integer costs")
        ints, unit = scaled
        span = int(sum(int(r.max()) for r in ints))
        if span * len(units) > 500_000_000:
            raise ValueError(f"group {label!r} is too large for the exact DP ({span} totals x {len(units)} units)")
        base = float(sum(r.min() for r in rows))
        best = np.full(span + 1, np.inf)
        best[0] = 0.0
        choice = np.zeros((len(units), span + 1), dtype=np.int16)
        for u, (c_row, e_row) in enumerate(zip(ints, e_rows)):
            nxt = np.full(span + 1, np.inf)
            arg = np.zeros(span + 1, dtype=np.int16)
            for level, (c, e) in enumerate(zip(c_row, e_row)):
                cand = np.full(span + 1, np.inf)
                cand[c:] = best[: span + 1 - c] + e
                better = cand < nxt
                nxt[better] = cand[better]
                arg[better] = level
            best, choice[u] = nxt, arg
        totals = base + np.arange(span + 1) * unit
        tol = 1e-6 * max(1.0, abs(hi))
        ok = (totals >= lo - tol) & (totals <= hi + tol) & np.isfinite(best)
        if not ok.any():
            raise ValueError(f"no feasible assignment for group {label!r}")
        t = int(np.flatnonzero(ok)[np.argmin(best[ok])])
        total += float(best[t])
        for u in range(len(units) - 1, -1, -1):
            level = int(choice[u, t])
            out[units[u]] = level
            t -= int(ints[u][level])
    return out, total


def _two_level_same_costs(
    costs: np.ndarray, errs: np.ndarray, n_levels: np.ndarray, lo: float | None, hi: float
) -> tuple[np.ndarray, float] | None:
    """The exact optimum when every unit has the same two costs (dropped or kept, one step each):
    the ``j`` units with the smallest error changes move, for the best ``j`` the budget allows.
    ``None`` when the group is not of that shape."""
    if lo is None or not (n_levels == 2).all():
        return None
    costs, errs = costs[:, :2], errs[:, :2]
    if not (costs == costs[0]).all() or not np.isfinite(errs).all():
        return None
    n = costs.shape[0]
    c0, c1 = float(costs[0, 0]), float(costs[0, 1])
    gain = errs[:, 1] - errs[:, 0]
    order = np.argsort(gain, kind="stable")
    j = np.arange(n + 1)
    totals = n * c0 + j * (c1 - c0)
    tol = 1e-6 * max(1.0, abs(hi))
    ok = (totals >= lo - tol) & (totals <= hi + tol)
    if not ok.any():
        return None
    values = float(errs[:, 0].sum()) + np.concatenate([[0.0], np.cumsum(gain[order])])
    best = int(j[ok][np.argmin(values[ok])])
    pick = np.zeros(n, dtype=np.int64)
    pick[order[:best]] = 1
    return pick, float(values[best])


def single_unit_probes(space: LevelSpace, base: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """For every unit ``i`` and level ``l != base[i]``: ``base`` with unit ``i`` at ``l`` and the budget
    repaired elsewhere (a few compensating moves). Together with ``base`` these points identify an additive
    model up to the budget's harmless directions: dp's probe design (``baselines``' ``dp``, and the
    probes of :class:`~levelsearch.EvoPress`). A repair that keeps undoing the move is retried 8 times.
    """
    out: list[np.ndarray] = []
    for i in range(space.n_units):
        for lv in range(int(space.n_levels[i])):
            if lv == base[i]:
                continue
            x = base.copy()
            x[i] = lv
            y = x
            for _ in range(8):  # repair may undo the move; retry with other compensations
                y = x if space.is_feasible(x) else space.repair(x, rng)
                if y[i] == lv:
                    break
            out.append(y)
    return out
