"""Exact zero counts for unstructured pruning, shared by every pruner.

A pruning level is a *number* of zeros, so the global sparsity of a profile is exact. Every
pruner takes the weight ``W`` (``out x in``) and a list of zero counts (one per level) and
returns one pruned copy per level, stacked as ``(levels, out, in)`` fp32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["zeros_for_sparsity", "check_zero_counts", "prune_by_score"]


def zeros_for_sparsity(numel: int, sparsity: float) -> int:
    """Number of zeros of a layer with ``numel`` weights at ``sparsity`` (fraction in [0, 1], rounded)."""
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must lie in [0, 1], got {sparsity}")
    return int(round(sparsity * numel))


def check_zero_counts(w: torch.Tensor, n_zeros: Sequence[int]) -> list[int]:
    """``n_zeros`` as ints after checking ``w`` is 2-D and every count fits in it (``ValueError`` otherwise)."""
    if w.ndim != 2:
        raise ValueError(f"expected a 2-D weight, got shape {tuple(w.shape)}")
    out = [int(z) for z in n_zeros]
    for z in out:
        if not 0 <= z <= w.numel():
            raise ValueError(f"a layer with {w.numel()} weights cannot have {z} zeros")
    return out


def prune_by_score(w: torch.Tensor, score: torch.Tensor, n_zeros: int) -> torch.Tensor:
    """Zero the ``n_zeros`` entries of ``w`` with the lowest ``score`` (ties broken by position)."""
    out = w.clone()
    if n_zeros:
        idx = torch.topk(score.flatten(), n_zeros, largest=False, sorted=False).indices
        out.view(-1)[idx] = 0.0
    return out
