"""OWL (outlier-weighted layerwise sparsity), the ``sparsity`` kind's own baseline: decoder layers with more
outliers get lower sparsity. Shared by the codec (its baseline, its layer statistics) and the problem."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["OWL_M_GRID", "OWL_LAMBDAS", "levels_for_sparsities", "owl_levels", "owl_search"]

OWL_M_GRID = (3.0, 5.0, 7.0, 10.0)  # outlier thresholds M of the OWL paper's grid
OWL_LAMBDAS = (0.02, 0.05, 0.08, 0.12, 0.2)


def levels_for_sparsities(problem: Any, sparsity: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The feasible assignment nearest to per-unit sparsities ``sparsity`` (rounded to levels, then repaired)."""
    step = int(problem.spec["step"])
    want = np.round((np.asarray(sparsity) - problem.target) * problem.numel / step).astype(np.int64)
    lv = np.clip(problem.uniform_levels() + want, 0, problem.space.max_level)
    return problem.space.repair(lv, rng)


def owl_levels(problem: Any, lam: float, m: float, rng: np.random.Generator) -> np.ndarray:
    """OWL: decoder layers with more outliers (``|W|·||X|| > M·mean``) get lower sparsity.

    Outlier ratios are min–max scaled to ``[0, 2λ]``; layer sparsity is
    ``target − (D − mean D)``; every unit of a layer gets its layer's sparsity,
    rounded to the level grid and repaired to the exact budget.
    """
    ratios = {layer: stats[f"{m:g}"] for layer, stats in problem.db.statistics("owl").items()}
    r = np.array([ratios[i] for i in range(problem.map.n_layers)])
    span = r.max() - r.min()
    d = (r - r.min()) / span * 2 * lam if span > 0 else np.zeros_like(r)
    layer_sparsity = problem.target - (d - d.mean())
    return levels_for_sparsities(problem, layer_sparsity[problem.unit_layer], rng)


def owl_search(
    problem: Any,
    *,
    fidelity: int = 2048,
    seed: int = 0,
    lambdas: Sequence[float] = OWL_LAMBDAS,
    ms: Sequence[float] = OWL_M_GRID,
) -> tuple[np.ndarray, dict[str, float]]:
    """OWL's grid over ``(λ, M)``, the best by KL on ``fidelity`` calibration tokens. Returns levels and the choice."""
    rng = np.random.default_rng(seed)
    grid = [(lam, m) for m in ms for lam in lambdas]
    cands = [owl_levels(problem, lam, m, rng) for lam, m in grid]
    kl, _ = problem.score(cands, "calibration", problem.search_pool.batch(fidelity, seed))
    best = int(np.argmin(kl))
    return cands[best], {"lambda": grid[best][0], "M": grid[best][1], "kl": float(kl[best])}
