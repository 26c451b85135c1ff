"""Wanda pruning of one linear layer: ``|W_ij| · ||X_j||`` compared within each output row."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .zeros import check_zero_counts

__all__ = ["wanda_scores", "wanda_prune"]


def wanda_scores(w: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``|W_ij| · sqrt(H_jj)`` (fp32): ``||X_j||² ∝ H_jj``. OWL's outlier statistics use the same score."""
    return w.abs() * torch.sqrt(torch.diagonal(h).to(torch.float32).clamp_min(0))[None, :]


def wanda_prune(w: torch.Tensor, h: torch.Tensor, n_zeros: Sequence[int]) -> torch.Tensor:
    """Wanda: score ``|W_ij| · ||X_j||`` compared within each output row.

    ``||X_j||² ∝ H_jj``. Each row loses ``n_zeros // out`` weights; the
    remaining ``n_zeros % out`` go to the rows whose next candidate scores lowest,
    so the count is exact.
    """
    zs = check_zero_counts(w, n_zeros)
    w = w.detach().to(torch.float32)
    score = wanda_scores(w, h)
    order = torch.argsort(score, dim=1)
    rows, cols = w.shape
    outs = []
    for z in zs:
        per_row, rest = divmod(z, rows)
        mask = torch.zeros_like(w, dtype=torch.bool)
        if per_row:
            mask.scatter_(1, order[:, :per_row], True)
        if rest:
            nxt = order[:, per_row]
            cand = score.gather(1, nxt[:, None]).squeeze(1)
            pick = torch.topk(cand, rest, largest=False).indices
            mask[pick, nxt[pick]] = True
        outs.append(w.masked_fill(mask, 0.0))
    return torch.stack(outs)
