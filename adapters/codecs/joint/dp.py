"""The ``joint`` kind's DP baseline: knapsack on per-unit errors with costs rounded to a resolution."""

from __future__ import annotations

from typing import Any

import numpy as np

from levelsearch import LevelSpace, solve_additive

__all__ = ["joint_dp_levels"]


def joint_dp_levels(
    problem: Any, resolution: float = 0.01, seed: int = 0, errors: np.ndarray | None = None
) -> np.ndarray:
    """DP on per-unit errors (default: the database's normalised output errors) with costs rounded to
    ``resolution`` bits per weight of the model.

    The rounded problem is solved exactly (knapsack), then the result is repaired into the
    true band (a few level moves at most).
    """
    total_w = float(problem.numel.sum())
    step = resolution * total_w
    tol = float(problem.budget_options["tol"])
    # the search's units (tie groups, when the run ties units): their costs and levels
    space_costs, n_levels = problem.space.costs, problem.space.n_levels
    costs = [np.round(space_costs[i, : int(k)] / step) for i, k in enumerate(n_levels)]
    hi = np.floor(problem.target * total_w / step)
    lo = np.ceil((problem.target - tol) * total_w / step)
    shadow = LevelSpace([len(c) for c in costs], costs=[c.tolist() for c in costs], total=hi, tol=max(0.0, hi - lo))
    errors = problem.layer_errors() if errors is None else errors
    lv, _ = solve_additive(shadow, np.nan_to_num(errors, nan=np.inf))
    if problem.space.is_feasible(lv):
        return lv
    return problem.space.repair(lv, np.random.default_rng(seed))
