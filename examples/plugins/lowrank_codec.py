"""A compression kind the package does not have, as a third party would add it: low-rank (SVD) truncation.

Every linear layer ``W`` (``out × in``) keeps a fraction ``p`` of its parameters as two factors
``A (out × r) · B (r × in)`` with ``r = floor(p · out · in / (out + in))`` (the best rank-``r``
approximation, by SVD); ``p = 1`` keeps ``W`` as it is. The budget is the band
``[target − tol, target]`` of the fraction of parameters kept over all linears.

Nothing in ``levelsearch`` changes: register the codec, then run ``levelsearch compress``::

    from levelsearch.adapters.codecs import register_codec
    from lowrank_codec import LowRankCodec

    register_codec("lowrank", LowRankCodec)
    main(["compress", "--method", "lowrank", "--target", "0.6", "--out", "runs/lowrank"])

(an installed package would declare it instead, in ``[project.entry-points."levelsearch.codecs"]``:
``lowrank = "lowrank_codec:LowRankCodec"``, and ``levelsearch compress --method lowrank`` finds it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from levelsearch.adapters.codecs.base import WeightCodec, problem_settings, target_in
from levelsearch.adapters.weightsearch import WeightLevelProblem

from levelsearch import LevelSpace

FRACTIONS = (1.0, 0.75, 0.5, 0.35, 0.25)


def rank_for(p: float, shape: tuple[int, int]) -> int:
    """Rank kept at parameter fraction ``p`` (``min(out, in)``, i.e. ``W`` itself, at ``p = 1``)."""
    m, n = shape
    return min(m, n) if p >= 1 else max(1, min(min(m, n), int(p * m * n / (m + n))))


def params_kept(p: float, shape: tuple[int, int]) -> int:
    m, n = shape
    return m * n if p >= 1 else rank_for(p, shape) * (m + n)


@dataclass
class Factors:
    """``W ≈ a @ b``; ``b`` is ``None`` when ``a`` is ``W`` itself."""

    a: torch.Tensor
    b: torch.Tensor | None


class LowRankCodec(WeightCodec):
    """Low-rank truncation of every linear (``--target`` = fraction of parameters kept, e.g. 0.6)."""

    name = "lowrank"
    profile_label = "parameters kept"
    export_how = "dense product of the factors"
    example_target = 0.6

    def check_spec(self, spec: dict[str, Any]) -> None:
        if not spec.get("fractions") or any(not 0.0 < float(p) <= 1.0 for p in spec["fractions"]):
            raise ValueError("lowrank spec needs parameter fractions in (0, 1]")

    def level_values(self, spec: dict[str, Any], numel: int) -> list[Any]:
        return [float(p) for p in spec["fractions"]]

    def make_variants(self, spec: dict[str, Any], w: Any, h: Any, values: list[Any]) -> list[Any]:
        u, s, vh = torch.linalg.svd(w.to(torch.float32), full_matrices=False)
        out = []
        for p in values:
            r = rank_for(p, tuple(w.shape))
            out.append(Factors(w.clone(), None) if p >= 1 else Factors(u[:, :r] * s[:r], vh[:r].clone()))
        return out

    def keeps_level(self, spec: dict[str, Any], value: Any, variant: Any) -> bool:
        shape = (variant.a.shape[0], variant.a.shape[1] if variant.b is None else variant.b.shape[1])
        kept = variant.a.numel() + (0 if variant.b is None else variant.b.numel())
        return kept == params_kept(value, shape)

    def encode(self, variant: Any) -> dict[str, Any]:
        return {"w": variant.a} if variant.b is None else {"a": variant.a, "b": variant.b}

    def decode(self, spec: dict[str, Any], value: Any, shape: tuple[int, int], part: Callable[[str], Any]) -> Any:
        return part("w").to(torch.float32) if value >= 1 else part("a") @ part("b")

    def dense(self, variant: Any) -> Any:
        return variant.a if variant.b is None else variant.a @ variant.b

    def export_entry(self, spec: dict[str, Any], value: Any, numel: int) -> dict[str, Any]:
        return {"fraction_kept": float(value)}

    def make_problem(self, settings: dict[str, Any]) -> Any:
        t = target_in(settings, 0.0, 1.0, "the fraction of parameters kept, in (0, 1]")
        return LowRankProblem(settings["model"], target=t, **problem_settings(settings))

    def summary(self, problem: Any, levels: np.ndarray) -> dict[str, Any]:
        return {**super().summary(problem, levels), "average": problem.average_kept(levels)}


class LowRankProblem(WeightLevelProblem):
    """Per-layer parameter fractions under a band on the fraction kept over all linears."""

    name = "llm-lowrank"

    def __init__(
        self,
        model: str = "smollm2",
        *,
        target: float = 0.6,
        fractions: Sequence[float] = FRACTIONS,
        tol: float = 0.02,
        **options: Any,
    ) -> None:
        self.target, self.tol = float(target), float(tol)
        spec = {"kind": "lowrank", "method": "svd", "fractions": sorted((float(p) for p in fractions), reverse=True)}
        self._setup(lambda m: spec, model, **options)
        self.kept = [[params_kept(p, self.db.shape(u)) for p in self.db.values(u)] for u in self.unit_names]
        n = float(self.numel.sum())
        space = LevelSpace([len(c) for c in self.kept], costs=self.kept, total=self.target * n, tol=self.tol * n)
        super().__init__(space)

    def _describe_extra(self) -> dict[str, Any]:
        return {"target": self.target, "tol": self.tol}

    def uniform_levels(self) -> np.ndarray | None:
        """The same fraction everywhere, the largest that meets the band, if any."""
        for k in range(len(self.kept[0])):
            lv = np.full(len(self.unit_names), k, dtype=np.int64)
            if self.space.is_feasible(lv):
                return lv
        return None

    def profile(self, levels: np.ndarray) -> np.ndarray:
        """Fraction of parameters kept by each unit."""
        return np.array([self.kept[u][int(lv)] / self.numel[u] for u, lv in enumerate(levels)])

    def average_kept(self, levels: np.ndarray) -> float:
        return float(self.space.cost(levels) / self.numel.sum())
