"""Joint search: a sparsity *and* a bit-width per layer under one memory budget in bits.

:class:`JointProblem` (kind ``"llm-joint"``): every linear of every decoder layer takes one
of ``len(sparsities) × len(bits)`` levels; level ``(s, b)`` is the weight pruned to sparsity
``s`` by SparseGPT and then quantized to ``b`` bits by GPTQ with its zeros kept (same
Hessian). Its memory is ``(numel − zeros)·b`` bits of values plus a one-bit-per-weight mask
when ``s > 0`` (scales and zero points, ~0.3 bits/weight at group size 128, are the same
for every level and left out). The budget is the band ``[target − tol, target]`` bits per
weight over all units, kept by repair, so a user asks for bytes, not for a knob.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from levelsearch import LevelSpace, solve_additive

from .models import DEFAULT_MODEL
from .weightsearch import WeightLevelProblem

__all__ = ["JointProblem", "joint_spec", "joint_dp_levels"]

DEFAULT_SPARSITIES = (0.0, 0.25, 0.5, 0.6, 0.7)
DEFAULT_JOINT_BITS = (2, 3, 4, 6, 8)


def joint_spec(
    *,
    sparsities: Sequence[float] = DEFAULT_SPARSITIES,
    bits: Sequence[int] = DEFAULT_JOINT_BITS,
    group_size: int | None = 128,
) -> dict[str, Any]:
    """The database spec of the joint levels (every sparsity with every bit-width)."""
    return {
        "kind": "joint",
        "method": "sparsegpt+gptq",
        "sparsities": [float(s) for s in sorted(sparsities)],
        "bits": sorted(int(b) for b in bits),
        "group_size": group_size,
    }


class JointProblem(WeightLevelProblem):
    """Per-layer (sparsity, bit-width) under a budget in bits per weight (see the module docstring).

    Args:
        target: bits per weight over all units, mask included (default 3.0).
        sparsities: sparsity choices (default 0, 0.25, 0.5, 0.6, 0.7).
        bits: bit-width choices (default 2, 3, 4, 6, 8).
        group_size: quantization group (default 128).
        tol: width of the budget band in bits per weight (default 0.02).
        Others: see :class:`~levelsearch.adapters.weightsearch.WeightLevelProblem`.
    """

    name = "llm-joint"

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        target: float = 3.0,
        sparsities: Sequence[float] = DEFAULT_SPARSITIES,
        bits: Sequence[int] = DEFAULT_JOINT_BITS,
        group_size: int | None = 128,
        tol: float = 0.02,
        **options: Any,
    ) -> None:
        self.target, self.tol = float(target), float(tol)
        self._setup(lambda m: joint_spec(sparsities=sparsities, bits=bits, group_size=group_size), model, **options)
        self.pairs = [np.asarray(self.db.values(n), dtype=np.int64) for n in self.unit_names]  # [zeros, bits]
        costs = [self.level_bits(u) for u in range(len(self.unit_names))]
        total = self.target * float(self.numel.sum())
        space = LevelSpace([len(c) for c in costs], costs=costs, total=total, tol=self.tol * float(self.numel.sum()))
        super().__init__(space)

    def level_bits(self, unit: int) -> list[float]:
        """Memory of each level of ``unit`` in bits: values kept × bits + a mask bit per weight if pruned."""
        n = int(self.numel[unit])
        return [float((n - z) * b + (n if z > 0 else 0)) for z, b in self.pairs[unit]]

    def _describe_extra(self) -> dict[str, Any]:
        return {"target": self.target, "tol": self.tol}

    def uniform_levels(self) -> np.ndarray | None:
        """The same (sparsity, bits) everywhere with the lowest output error among those in the band, if any."""
        errors = np.nanmean(self.unit_errors(), axis=0)
        for k in np.argsort(errors):
            lv = np.full(len(self.unit_names), int(k), dtype=np.int64)
            if self.space.is_feasible(lv):
                return lv
        return None

    def profile(self, levels: np.ndarray) -> np.ndarray:
        """Bits per weight of each unit under ``levels`` (mask included)."""
        return np.array([self.level_bits(u)[int(lv)] / self.numel[u] for u, lv in enumerate(levels)])

    def sparsity_and_bits(self, levels: np.ndarray) -> list[tuple[float, int]]:
        """``(sparsity, bits)`` of each unit."""
        return [(float(self.pairs[u][lv][0] / self.numel[u]), int(self.pairs[u][lv][1])) for u, lv in enumerate(levels)]

    def average_bits(self, levels: np.ndarray) -> float:
        """Σ memory / Σ numel, in bits per weight."""
        return float(self.space.cost(levels) / self.numel.sum())

    average = average_bits


def joint_dp_levels(problem: JointProblem, resolution: float = 0.01, seed: int = 0) -> np.ndarray:
    """DP on normalised output errors with costs rounded to ``resolution`` bits per weight of the model.

    The rounded problem is solved exactly (knapsack), then the result is repaired into the
    true band (a few level moves at most).
    """
    total_w = float(problem.numel.sum())
    step = resolution * total_w
    costs = [np.round(np.asarray(problem.level_bits(u)) / step) for u in range(problem.space.n_units)]
    hi = np.floor(problem.target * total_w / step)
    lo = np.ceil((problem.target - problem.tol) * total_w / step)
    shadow = LevelSpace([len(c) for c in costs], costs=[c.tolist() for c in costs], total=hi, tol=max(0.0, hi - lo))
    lv, _ = solve_additive(shadow, np.nan_to_num(problem.unit_errors(), nan=np.inf))
    if problem.space.is_feasible(lv):
        return lv
    return problem.space.repair(lv, np.random.default_rng(seed))
