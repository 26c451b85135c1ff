"""Magnitude pruning of one linear layer: the smallest weights of the whole layer go first."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .zeros import check_zero_counts, prune_by_score

__all__ = ["magnitude_prune"]


def magnitude_prune(w: torch.Tensor, n_zeros: Sequence[int]) -> torch.Tensor:
    """Zero the smallest-magnitude weights of the whole layer, one copy per entry of ``n_zeros``."""
    zs = check_zero_counts(w, n_zeros)
    w = w.detach().to(torch.float32)
    score = w.abs()
    return torch.stack([prune_by_score(w, score, z) for z in zs])
