"""GPTQ weight quantization of one linear layer: column by column, each error spread over later columns."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .grid import Quantized, minmax_params, round_to_grid, split_levels, stack_levels
from .hessian import inverse_cholesky

__all__ = ["gptq_quantize"]


@torch.no_grad()
def gptq_quantize(
    w: torch.Tensor,
    h: torch.Tensor,
    bits: Sequence[int],
    *,
    group_size: int | None = 128,
    block_size: int = 128,
    damping: float = 0.01,
    zero_mask: torch.Tensor | None = None,
) -> list[Quantized]:
    """GPTQ: quantize column by column, spreading each column's error over later columns (OBS).

    A group's grid is fitted when the loop reaches its first column, on the
    weights as updated so far. Columns whose input was always zero are set to 0.

    Args:
        w: ``(out, in)`` weight.
        h: ``(in, in)`` raw Hessian ``2XᵀX/N``.
        bits: bit-widths, one result each.
        group_size: columns per group (default 128; ``None`` = per channel).
        block_size: columns per lazy-update block (default 128).
        damping: fraction of ``mean(diag H)`` added to the diagonal (default 1%).
        zero_mask: optional ``(out, in)`` boolean mask of weights that must stay exactly 0
            (a pruned weight: its code is the zero point, its error is spread like any other).
    """
    cols = w.shape[1]
    u, dead = inverse_cholesky(h, damping)
    st = stack_levels(w, bits, group_size)
    wk, maxq, g, codes, scales, zeros = st.w, st.maxq, st.group, st.codes, st.scales, st.zeros
    wk[:, dead] = 0.0
    keep = None if zero_mask is None else zero_mask.to(torch.bool).repeat(len(st.bits), 1)
    if group_size is None:
        scales[:, 0], zeros[:, 0] = minmax_params(wk, maxq)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        w1 = wk[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        u1 = u[i1:i2, i1:i2]
        for j in range(i2 - i1):
            c = i1 + j
            gi = c // g
            if group_size is not None and c % g == 0:
                end = min(c + g, cols)
                seg = w1[:, j : j + end - c] if end <= i2 else torch.cat([w1[:, j:], wk[:, i2:end]], dim=1)
                scales[:, gi], zeros[:, gi] = minmax_params(seg, maxq)
            col = w1[:, j]
            q = round_to_grid(col, scales[:, gi], zeros[:, gi], maxq)
            if keep is not None:
                q = torch.where(keep[:, c], zeros[:, gi], q)
            codes[:, c] = q
            e = (col - scales[:, gi] * (q - zeros[:, gi])) / u1[j, j]
            w1[:, j:] -= e[:, None] * u1[j, j:][None, :]
            err1[:, j] = e
        if i2 < cols:
            wk[:, i2:] -= err1 @ u[i1:i2, i2:]
    return split_levels(w, st, group_size)
