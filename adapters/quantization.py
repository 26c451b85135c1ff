"""Dynamic bit-width: per-layer bit-widths searched under a budget on the total bits.

:class:`QuantProblem` (kind ``"llm-quant"``): units are every linear projection of every
decoder layer, a unit's level is a bit-width (default 2..6, GPTQ, group size 128), and
the budget is ``Σ numel·bits = target·Σ numel``. With ``budget="exact"`` (default) the
units are grouped by size (q/o, k/v, gate/up/down for Llama) and each group holds the
target exactly, so a level switch (one layer up a bit, one of the same size down) keeps
the budget; the target may be fractional (2.5 bits) as long as ``target × units`` of
each group is a whole number. ``budget="band"`` puts all units in one group with the band
``[target − tol, target]`` bits per weight, kept by repair.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import nn

from levelsearch import LevelSpace

from .models import DEFAULT_MODEL
from .weightsearch import WeightLevelProblem

__all__ = ["QuantProblem", "quant_spec", "DEFAULT_BITS"]

DEFAULT_BITS = (2, 3, 4, 5, 6)


def quant_spec(
    model: nn.Module, *, bits: Sequence[int] = DEFAULT_BITS, method: str = "gptq", group_size: int | None = 128
) -> dict[str, Any]:
    """The database spec: bit-widths ``bits`` (default 2..6), ``"gptq"`` or ``"rtn"``, group size (default 128)."""
    return {"kind": "quant", "method": method, "bits": sorted(int(b) for b in bits), "group_size": group_size}


class QuantProblem(WeightLevelProblem):
    """Per-layer bit-widths under an average-bits budget (see the module docstring).

    Args:
        target: average bits per weight (default 3.0; fractional allowed).
        bits: the bit-widths a layer may take (default 2..6).
        method: ``"gptq"`` (default) or ``"rtn"``.
        group_size: columns per quantization group (default 128; ``None`` per channel).
        budget: ``"exact"`` (default, per group of equal-size layers) or ``"band"``.
        tol: width of the band in bits per weight for ``budget="band"`` (default 0.01).
        Others: see :class:`~levelsearch.adapters.weightsearch.WeightLevelProblem`.
    """

    name = "llm-quant"

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        target: float = 3.0,
        bits: Sequence[int] = DEFAULT_BITS,
        method: str = "gptq",
        group_size: int | None = 128,
        budget: str = "exact",
        tol: float = 0.01,
        **options: Any,
    ) -> None:
        if budget not in ("exact", "band"):
            raise ValueError(f"budget must be 'exact' or 'band', got {budget!r}")
        bl = sorted(int(b) for b in bits)
        self.target, self.budget = float(target), budget
        if not bl[0] <= self.target <= bl[-1]:
            raise ValueError(f"target {target} bits lies outside the bit-widths {bl[0]}..{bl[-1]}; change one of them")
        self._setup(lambda m: quant_spec(m, bits=bits, method=method, group_size=group_size), model, **options)
        self.bits = np.asarray(bl, dtype=np.int64)
        costs = [(n * self.bits).tolist() for n in self.numel]
        if budget == "exact":
            labels = [f"{int(n)}" for n in self.numel]
            totals: dict[Any, float] = {}
            for lab, n in zip(labels, self.numel):
                totals[lab] = totals.get(lab, 0.0) + self.target * float(n)
            try:
                space = LevelSpace([len(bl)] * len(costs), costs=costs, total=totals, groups=labels)
            except ValueError as exc:
                raise ValueError(
                    f"{exc}; target {target} bits is not exactly reachable in every group of equal-size layers: "
                    "use budget='band'"
                ) from None
        else:
            total = self.target * float(self.numel.sum())
            space = LevelSpace([len(bl)] * len(costs), costs=costs, total=total, tol=float(tol) * self.numel.sum())
        super().__init__(space)

    def _describe_extra(self) -> dict[str, Any]:
        return {"target": self.target, "budget": self.budget}

    def uniform_levels(self) -> np.ndarray | None:
        """Every unit at the target bit-width, or ``None`` for a fractional target."""
        hit = np.flatnonzero(self.bits == self.target)
        return None if hit.size == 0 else np.full(len(self.unit_names), int(hit[0]), dtype=np.int64)

    def profile(self, levels: np.ndarray) -> np.ndarray:
        """Bit-width of each unit under ``levels``."""
        return self.bits[np.asarray(levels, dtype=np.int64)]

    def average_bits(self, levels: np.ndarray) -> float:
        """``Σ numel·bits / Σ numel``."""
        return float((self.numel * self.profile(levels)).sum() / self.numel.sum())
