"""A compression kind the package does not have, as a third party would add it: low-rank (SVD) truncation.

Every linear layer ``W`` (``out × in``) keeps a fraction ``p`` of its parameters as two factors
``A (out × r) · B (r × in)`` with ``r = floor(p · out · in / (out + in))`` (the best rank-``r``
approximation, by SVD); ``p = 1`` keeps ``W`` as it is. The budget is the band
``[target − tol, target]`` of the fraction of parameters kept over all units (the codec's default
budget: ``amount`` is the parameters a level keeps). The SVD needs no calibration statistic.

This file is the whole plug-in: the codec plugs into levelsearch's generic layer-wise problem, its
baselines (uniform, DP, random), the search, the held-out report, the plots and the export, with no
subclass and no change to the package. Register it, then run ``levelsearch compress``::

    from levelsearch.adapters.codecs import register_codec
    from lowrank_codec import LowRankCodec

    register_codec("lowrank", LowRankCodec)
    main(["compress", "--method", "lowrank", "--target", "0.6", "--out", "runs/lowrank"])

(an installed package would declare it instead, in ``[project.entry-points."levelsearch.codecs"]``:
``lowrank = "lowrank_codec:LowRankCodec"``, and ``levelsearch compress --method lowrank`` finds it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from levelsearch.adapters.codecs.base import WeightCodec

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
    statistics = "none"  # the SVD of the weight alone
    default_spec: ClassVar[dict[str, Any]] = {"method": "svd", "fractions": FRACTIONS}

    #: which linears are units, by their name within a decoder layer (``None``: every linear)
    modules: ClassVar[tuple[str, ...] | None] = None

    def units(self, model: Any) -> list[tuple[str, int, Any]]:
        return [u for u in super().units(model) if self.modules is None or u[0].rsplit(".", 1)[-1] in self.modules]

    def check_spec(self, spec: dict[str, Any]) -> None:
        if not spec.get("fractions") or any(not 0.0 < float(p) <= 1.0 for p in spec["fractions"]):
            raise ValueError("lowrank spec needs parameter fractions in (0, 1]")

    def level_values(self, spec: dict[str, Any], numel: int) -> list[Any]:
        return sorted((float(p) for p in spec["fractions"]), reverse=True)

    def unit_amounts(self, spec: dict[str, Any], values: list[Any], shape: tuple[int, int]) -> list[float]:
        return [float(params_kept(p, shape)) for p in values]  # parameters kept: the budget's quantity

    def make_variants(self, spec: dict[str, Any], w: Any, stats: Any, values: list[Any]) -> list[Any]:
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
