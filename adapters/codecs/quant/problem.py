"""Dynamic bit-width: per-layer bit-widths searched under a budget on the total bits.

:class:`QuantProblem` (kind ``"llm-quant"``) is the generic
:class:`~levelsearch.adapters.weights.problem.WeightLevelProblem` of the ``quant`` codec, named: units are
every linear projection of every decoder layer, a unit's level is a bit-width (default 2..6, GPTQ, group
size 128), and the budget is ``Σ numel·bits = target·Σ numel`` (exact per group of equal-size layers, or
a band: :mod:`levelsearch.adapters.codecs.quant.codec`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from ...weights.problem import WeightLevelProblem
from .. import get_weight_codec

__all__ = ["QuantProblem", "quant_spec", "DEFAULT_BITS"]

DEFAULT_BITS = (2, 3, 4, 5, 6)


def quant_spec(
    model: nn.Module, *, bits: Sequence[int] = DEFAULT_BITS, method: str = "gptq", group_size: int | None = 128
) -> dict[str, Any]:
    """The database spec: bit-widths ``bits`` (default 2..6), ``"gptq"`` or ``"rtn"``, group size (default 128)."""
    codec = get_weight_codec("quant")
    return codec.make_spec(model, min(bits), bits=bits, method=method, group_size=group_size)


class QuantProblem(WeightLevelProblem):
    """Per-layer bit-widths under an average-bits budget (see the module docstring).

    Args:
        target: average bits per weight (default 3.0; fractional allowed).
        bits: the bit-widths a layer may take (default 2..6).
        method: ``"gptq"`` (default) or ``"rtn"``.
        group_size: columns per quantization group (default 128; ``None`` per channel).
        budget: ``"exact"`` (default, per group of equal-size layers) or ``"band"``.
        tol: width of the band in bits per weight for ``budget="band"`` (default 0.01).
        Others: see :class:`~levelsearch.adapters.weights.problem.WeightLevelProblem`.
    """

    codec_name = "quant"
    default_target = 3.0

    average_bits = WeightLevelProblem.average  # Σ numel·bits / Σ numel
