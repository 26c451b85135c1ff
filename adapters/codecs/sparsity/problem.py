"""Unstructured sparsity: per-layer sparsity levels searched under an exact average-sparsity budget.

:class:`SparsityProblem` (kind ``"llm-sparsity"``) is the generic
:class:`~levelsearch.adapters.weights.problem.WeightLevelProblem` of the ``sparsity`` codec, named; the
levels, costs, budget and OWL live in :mod:`levelsearch.adapters.codecs.sparsity.codec`. The baselines as
assignments: uniform (:meth:`SparsityProblem.uniform_levels`), OWL (:func:`owl_search`), DP on
normalised layer errors (:func:`dp_levels`) and best-of-N random (:func:`random_levels`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from ...weights.problem import WeightLevelProblem, dp_levels, random_levels
from .. import get_weight_codec
from .owl import levels_for_sparsities, owl_levels, owl_search

__all__ = ["SparsityProblem", "sparsity_spec", "owl_levels", "owl_search", "dp_levels", "random_levels"]


def sparsity_spec(
    model: nn.Module, target: float, *, method: str = "sparsegpt", step: int | None = None, max_offset: int = 4
) -> dict[str, Any]:
    """The database spec of ``model`` at average sparsity ``target`` (see :class:`SparsityProblem`)."""
    return get_weight_codec("sparsity").make_spec(model, target, method=method, step=step, max_offset=max_offset)


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
        step: weights per level step (default 4% of the mean linear layer's size).
        max_offset: levels on each side of the target (default 4).
        Others: see :class:`~levelsearch.adapters.weights.problem.WeightLevelProblem`.
    """

    codec_name = "sparsity"
    default_target = 0.5

    average_sparsity = WeightLevelProblem.average  # zeros over all units / weights over all units

    def levels_for_sparsities(self, sparsity: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The feasible assignment nearest to per-unit sparsities ``sparsity`` (rounded to levels, then repaired)."""
        return levels_for_sparsities(self, sparsity, rng)
