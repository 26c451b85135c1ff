"""Joint search: a sparsity *and* a bit-width per layer under one memory budget in bits.

:class:`JointProblem` (kind ``"llm-joint"``) is the generic
:class:`~levelsearch.adapters.weights.problem.WeightLevelProblem` of the ``joint`` codec, named: every
linear of every decoder layer takes one of ``len(sparsities) × len(bits)`` levels, level ``(s, b)``
being the weight pruned to sparsity ``s`` by SparseGPT and then quantized to ``b`` bits by GPTQ with its
zeros kept; the budget is a band in bits per weight, mask included (:mod:`levelsearch.adapters.codecs.joint.codec`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ...weights.problem import WeightLevelProblem
from .. import get_weight_codec
from .dp import joint_dp_levels

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
    return get_weight_codec("joint").make_spec(None, 0.0, sparsities=sparsities, bits=bits, group_size=group_size)


class JointProblem(WeightLevelProblem):
    """Per-layer (sparsity, bit-width) under a budget in bits per weight (see the module docstring).

    Args:
        target: bits per weight over all units, mask included (default 3.0).
        sparsities: sparsity choices (default 0, 0.25, 0.5, 0.6, 0.7).
        bits: bit-width choices (default 2, 3, 4, 6, 8).
        group_size: quantization group (default 128).
        tol: width of the budget band in bits per weight (default 0.02).
        Others: see :class:`~levelsearch.adapters.weights.problem.WeightLevelProblem`.
    """

    codec_name = "joint"
    default_target = 3.0

    average_bits = WeightLevelProblem.average  # Σ memory / Σ numel, in bits per weight (mask included)

    def sparsity_and_bits(self, levels: np.ndarray) -> list[tuple[float, int]]:
        """``(sparsity, bits)`` of each unit."""
        return list(self.codec.summary(self, levels)["sparsity_bits"])
