"""Unstructured pruning of one linear layer: magnitude, Wanda and SparseGPT.

Every function takes the weight ``W`` (``out x in``), a list of target numbers
of zeros (one per level) and returns one pruned copy per level, stacked as
``(levels, out, in)`` fp32. Each copy has *exactly* its number of zeros (a
level is defined by a count, so the global sparsity of a profile is exact).
Several levels come from one Hessian; SparseGPT processes all levels in one
pass by stacking the copies as extra rows (rows are independent given ``H``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .hessian import inverse_cholesky

_LAZY = 32  # columns per lazy-update sub-block (speed only; the result is the same)

__all__ = ["zeros_for_sparsity", "magnitude_prune", "wanda_prune", "sparsegpt_prune", "PRUNERS"]


def zeros_for_sparsity(numel: int, sparsity: float) -> int:
    """Number of zeros of a layer with ``numel`` weights at ``sparsity`` (fraction in [0, 1], rounded)."""
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must lie in [0, 1], got {sparsity}")
    return int(round(sparsity * numel))


def _check(w: torch.Tensor, n_zeros: Sequence[int]) -> list[int]:
    if w.ndim != 2:
        raise ValueError(f"expected a 2-D weight, got shape {tuple(w.shape)}")
    out = [int(z) for z in n_zeros]
    for z in out:
        if not 0 <= z <= w.numel():
            raise ValueError(f"a layer with {w.numel()} weights cannot have {z} zeros")
    return out


def _prune_by_score(w: torch.Tensor, score: torch.Tensor, n_zeros: int) -> torch.Tensor:
    """Zero the ``n_zeros`` entries of ``w`` with the lowest ``score`` (ties broken by position)."""
    out = w.clone()
    if n_zeros:
        idx = torch.topk(score.flatten(), n_zeros, largest=False, sorted=False).indices
        out.view(-1)[idx] = 0.0
    return out


def magnitude_prune(w: torch.Tensor, n_zeros: Sequence[int]) -> torch.Tensor:
    """Zero the smallest-magnitude weights of the whole layer, one copy per entry of ``n_zeros``."""
    zs = _check(w, n_zeros)
    w = w.detach().to(torch.float32)
    score = w.abs()
    return torch.stack([_prune_by_score(w, score, z) for z in zs])


def wanda_prune(w: torch.Tensor, h: torch.Tensor, n_zeros: Sequence[int]) -> torch.Tensor:
    """Wanda: score ``|W_ij| · ||X_j||`` compared within each output row.

    ``||X_j||² ∝ H_jj``. Each row loses ``n_zeros // out`` weights; the
    remaining ``n_zeros % out`` go to the rows whose next candidate scores lowest,
    so the count is exact.
    """
    zs = _check(w, n_zeros)
    w = w.detach().to(torch.float32)
    score = w.abs() * torch.sqrt(torch.diagonal(h).to(torch.float32).clamp_min(0))[None, :]
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
    zs = _check(w, n_zeros)
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


PRUNERS = ("magnitude", "wanda", "sparsegpt")
