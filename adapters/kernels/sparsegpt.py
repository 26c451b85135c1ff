"""SparseGPT pruning of one linear layer: column blocks pruned with OBS updates of the rest.

Several levels come from one Hessian: all levels are processed in one pass by stacking the
copies as extra rows (rows are independent given ``H``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .hessian import inverse_cholesky
from .zeros import check_zero_counts

__all__ = ["sparsegpt_prune"]

_LAZY = 32  # columns per lazy-update sub-block (speed only; the result is the same)


def _block_zeros(total: int, cols: int, bounds: list[tuple[int, int]]) -> list[int]:
    """Split ``total`` zeros over column blocks in proportion to their width, exactly."""
    return [round(total * i2 / cols) - round(total * i1 / cols) for i1, i2 in bounds]


@torch.no_grad()
def sparsegpt_prune(
    w: torch.Tensor, h: torch.Tensor, n_zeros: Sequence[int], *, block_size: int = 128, damping: float = 0.01
) -> torch.Tensor:
    """SparseGPT: prune column block by column block, updating the rest by OBS.

    Within each block of ``block_size`` input columns the mask is chosen at the
    block's start (adaptive mask selection): the entries with the lowest
    ``w² / [H⁻¹]_jj²`` (on the weights as already updated) are pruned, the
    block's share of the zeros. Each pruned column's error is spread over the
    later columns through the Cholesky factor of ``H⁻¹``. Inputs that were always
    zero (dead columns) are pruned first, they cost nothing.

    Args:
        w: ``(out, in)`` weight.
        h: ``(in, in)`` raw Hessian ``2XᵀX/N`` of the layer's inputs.
        n_zeros: zeros per level.
        block_size: columns per block (default 128).
        damping: fraction of ``mean(diag H)`` added to the diagonal (default 1%).
    """
    zs = check_zero_counts(w, n_zeros)
    rows, cols = w.shape
    u, dead = inverse_cholesky(h, damping)
    k = len(zs)
    wk = w.detach().to(torch.float32).repeat(k, 1)  # level copies stacked as rows
    bounds = [(i1, min(i1 + block_size, cols)) for i1 in range(0, cols, block_size)]
    per_block = [_block_zeros(z, cols, bounds) for z in zs]
    for b, (i1, i2) in enumerate(bounds):
        # adaptive mask: chosen at the block's start on the weights as updated so far
        d = torch.diagonal(u)[i1:i2]
        score = wk[:, i1:i2].square() / d.square()[None, :]
        score[:, dead[i1:i2]] = -1.0
        mask = torch.zeros_like(score, dtype=torch.bool)
        for lvl in range(k):
            nz = per_block[lvl][b]
            if nz:
                part = score[lvl * rows : (lvl + 1) * rows]
                idx = torch.topk(part.flatten(), nz, largest=False, sorted=False).indices
                mask[lvl * rows : (lvl + 1) * rows].view(-1)[idx] = True
        # OBS updates in short lazy sub-blocks: the outer-product updates inside a sub-block are
        # elementwise (memory-bound), the updates of later columns are one matrix product
        for j1 in range(i1, i2, _LAZY):
            j2 = min(j1 + _LAZY, i2)
            w1 = wk[:, j1:j2].clone()
            err1 = torch.empty_like(w1)
            u1 = u[j1:j2, j1:j2]
            for j in range(j2 - j1):
                col = w1[:, j]
                q = col.masked_fill(mask[:, j1 - i1 + j], 0.0)
                e = (col - q) / u1[j, j]
                w1[:, j:] -= e[:, None] * u1[j, j:][None, :]
                w1[:, j] = q
                err1[:, j] = e
            wk[:, j1:j2] = w1
            if j2 < cols:
                wk[:, j2:] -= err1 @ u[j1:j2, j2:]
    return wk.view(k, rows, cols)
