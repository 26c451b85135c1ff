"""Unstructured sparsity: per-layer sparsity levels searched under an exact average-sparsity budget.

:class:`SparsityProblem` (kind ``"llm-sparsity"``) and the baselines expressed as
assignments: uniform (:meth:`SparsityProblem.uniform_levels`), OWL (:func:`owl_search`),
DP on normalised layer errors (:func:`dp_levels`) and best-of-N random (:func:`random_levels`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import nn

from levelsearch import LevelSpace

from .calibration import linear_units
from .codecs.sparsity import OWL_M_GRID
from .models import DEFAULT_MODEL
from .weightsearch import WeightLevelProblem, dp_levels, random_levels

__all__ = ["SparsityProblem", "sparsity_spec", "owl_levels", "owl_search", "dp_levels", "random_levels"]

STEP_FRACTION = 0.04  # default level step: 4% of the mean linear layer's weights


def sparsity_spec(
    model: nn.Module, target: float, *, method: str = "sparsegpt", step: int | None = None, max_offset: int = 4
) -> dict[str, Any]:
    """The database spec of ``model`` at average sparsity ``target``.

    Args:
        target: average sparsity, a fraction in [0, 1).
        method: ``"sparsegpt"`` (default), ``"wanda"`` or ``"magnitude"``.
        step: weights per level step (the same for every layer; default 4% of the
            mean linear layer's size).
        max_offset: levels on each side of the target (default 4: ±4 steps of 4% cover the
            range of ±8 steps of 2% with half the database and half the build time).
    """
    if not 0.0 <= float(target) < 1.0:
        raise ValueError(f"target sparsity must be a fraction in [0, 1), got {target}")
    sizes = [mod.weight.numel() for _, _, mod in linear_units(model)]
    if step is None:
        step = max(1, round(STEP_FRACTION * sum(sizes) / len(sizes)))
    return {
        "kind": "sparsity",
        "method": method,
        "target": float(target),
        "step": int(step),
        "max_offset": int(max_offset),
    }


class SparsityProblem(WeightLevelProblem):
    """Per-layer unstructured sparsity under an exact average sparsity (kind ``"llm-sparsity"``).

    Units are every linear projection of every decoder layer (q/k/v/o/gate/up/down for
    Llama). Level ``l`` of a unit means ``round(target·numel) + l·step`` zeros, for
    ``l = −max_offset .. max_offset`` within ``[0, numel]``; every step adds or removes the
    same ``step`` nonzeros whatever the layer's size, so the budget ``Σ l = 0`` keeps the
    total number of zeros exactly at that of the uniform profile (average sparsity ``target``).
    In the level space a unit's level *index* runs from its lowest offset; its cost is the offset.

    Args:
        target: average sparsity (default 0.5).
        method: ``"sparsegpt"`` (default), ``"wanda"`` or ``"magnitude"``.
        step, max_offset: see :func:`sparsity_spec`.
        Others: see :class:`~levelsearch.adapters.weightsearch.WeightLevelProblem`.
    """

    name = "llm-sparsity"

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        target: float = 0.5,
        method: str = "sparsegpt",
        step: int | None = None,
        max_offset: int = 4,
        **options: Any,
    ) -> None:
        self.target = float(target)
        self._setup(
            lambda m: sparsity_spec(m, target, method=method, step=step, max_offset=max_offset), model, **options
        )
        spec = self.spec
        step_ = int(spec["step"])
        offsets: list[list[int]] = []
        base_index: list[int] = []
        for u, name in enumerate(self.unit_names):
            vals = np.asarray(self.db.values(name))
            base = int(round(self.target * self.numel[u]))
            base_index.append(int(np.flatnonzero(vals == base)[0]))
            offsets.append(((vals - base) // step_).tolist())
        self.base = np.asarray(base_index, dtype=np.int64)
        super().__init__(LevelSpace([len(o) for o in offsets], costs=offsets, total=0))

    def uniform_levels(self) -> np.ndarray:
        """Every unit at the target sparsity (offset 0)."""
        return self.base.copy()

    def profile(self, levels: np.ndarray) -> np.ndarray:
        """Sparsity (fraction of zeros) of each unit under ``levels``."""
        return np.array(
            [self.db.values(n)[int(lv)] / self.numel[u] for u, (n, lv) in enumerate(zip(self.unit_names, levels))]
        )

    def average_sparsity(self, levels: np.ndarray) -> float:
        """Zeros over all units / weights over all units."""
        zeros = sum(self.db.values(n)[int(lv)] for n, lv in zip(self.unit_names, levels))
        return float(zeros / self.numel.sum())

    def levels_for_sparsities(self, sparsity: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The feasible assignment nearest to per-unit sparsities ``sparsity`` (rounded to levels, then repaired)."""
        step = int(self.spec["step"])
        want = np.round((np.asarray(sparsity) - self.target) * self.numel / step).astype(np.int64)
        lv = np.clip(self.base + want, 0, self.space.max_level)
        return self.space.repair(lv, rng)


def owl_levels(problem: SparsityProblem, lam: float, m: float, rng: np.random.Generator) -> np.ndarray:
    """OWL: decoder layers with more outliers (``|W|·||X|| > M·mean``) get lower sparsity.

    Outlier ratios are min–max scaled to ``[0, 2λ]``; layer sparsity is
    ``target − (D − mean D)``; every linear of a layer gets its layer's sparsity,
    rounded to the level grid and repaired to the exact budget.
    """
    ratios = {layer: stats[f"{m:g}"] for layer, stats in problem.db.statistics("owl").items()}
    r = np.array([ratios[i] for i in range(problem.map.n_layers)])
    span = r.max() - r.min()
    d = (r - r.min()) / span * 2 * lam if span > 0 else np.zeros_like(r)
    layer_sparsity = problem.target - (d - d.mean())
    return problem.levels_for_sparsities(layer_sparsity[problem.unit_layer], rng)


OWL_LAMBDAS = (0.02, 0.05, 0.08, 0.12, 0.2)


def owl_search(
    problem: SparsityProblem,
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
