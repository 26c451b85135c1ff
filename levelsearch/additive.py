"""Exact optimum of an *additive* objective under the space's budget (knapsack DP).

Used for the known optimum of the ``linear`` synthetic problem and by the
``dp`` baseline, which assumes per-unit errors add up.
"""

from __future__ import annotations

import numpy as np

from .space import LevelSpace, _integer_scale

__all__ = ["solve_additive"]


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
