"""Weight quantization of one linear layer: round-to-nearest and GPTQ.

Asymmetric min–max quantization per group of ``group_size`` consecutive input
columns of each output row (default 128; ``None`` = one group per row, i.e.
per channel). An input width the group size does not divide gets a shorter
last group (SmolLM2's 576 = 4·128 + 64). A level is a bit-width; several levels
come from one Hessian and GPTQ handles them in one pass by stacking the copies
as extra rows. Results keep integer codes plus per-group scales (fp32) and
zero points, so a database stores ``bits`` bits per weight, not a dense copy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .hessian import inverse_cholesky

__all__ = ["Quantized", "rtn_quantize", "gptq_quantize", "pack_codes", "unpack_codes", "QUANTIZERS"]


@dataclass
class Quantized:
    """One quantized weight: ``W ≈ scales · (codes − zeros)`` group-wise.

    Attributes:
        bits: bit-width of the codes (1..8).
        group_size: input columns per group (the last may be shorter); ``None`` = per channel.
        codes: ``(out, in)`` uint8 codes in ``0 .. 2^bits − 1``.
        scales: ``(out, groups)`` fp32 step sizes.
        zeros: ``(out, groups)`` uint8 zero points.
    """

    bits: int
    group_size: int | None
    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor

    def dequantize(self) -> torch.Tensor:
        """The fp32 weight the codes stand for."""
        cols = self.codes.shape[1]
        g = self.group_size or cols
        scale = self.scales.to(torch.float32).repeat_interleave(g, dim=1)[:, :cols]
        zero = self.zeros.to(torch.float32).repeat_interleave(g, dim=1)[:, :cols]
        return scale * (self.codes.to(torch.float32) - zero)


def _bits_list(bits: Sequence[int]) -> list[int]:
    out = [int(b) for b in bits]
    for b in out:
        if not 1 <= b <= 8:
            raise ValueError(f"bit-widths must lie in 1..8, got {b}")
    return out


def _params(x: torch.Tensor, maxq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Min–max scale and zero point of each row of ``x`` (the range always contains 0)."""
    xmin = torch.clamp(x.min(dim=1).values, max=0.0)
    xmax = torch.clamp(x.max(dim=1).values, min=0.0)
    flat = xmin == xmax
    xmin = torch.where(flat, torch.full_like(xmin, -1.0), xmin)
    xmax = torch.where(flat, torch.full_like(xmax, 1.0), xmax)
    m = maxq.squeeze(1)
    scale = (xmax - xmin) / m
    zero = torch.clamp(torch.round(-xmin / scale), torch.zeros_like(m), m)
    return scale, zero


def _round(col: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: torch.Tensor) -> torch.Tensor:
    m = maxq.squeeze(1)
    return torch.clamp(torch.round(col / scale) + zero, torch.zeros_like(m), m)


def _n_groups(cols: int, group_size: int | None) -> int:
    if group_size is None:
        return 1
    if group_size < 1:
        raise ValueError(f"group_size must be a positive number of columns or None, got {group_size}")
    return math.ceil(cols / group_size)


def _split(w: torch.Tensor, bits: list[int], codes, scales, zeros, group_size) -> list[Quantized]:  # noqa: ANN001
    rows = w.shape[0]
    out = []
    for k, b in enumerate(bits):
        sl = slice(k * rows, (k + 1) * rows)
        out.append(Quantized(b, group_size, codes[sl].to(torch.uint8), scales[sl].clone(), zeros[sl].to(torch.uint8)))
    return out


@torch.no_grad()
def rtn_quantize(w: torch.Tensor, bits: Sequence[int], *, group_size: int | None = 128) -> list[Quantized]:
    """Round-to-nearest: each group's min–max grid, no error feedback. One result per bit-width."""
    bl = _bits_list(bits)
    rows, cols = w.shape
    wk = w.detach().to(torch.float32).repeat(len(bl), 1)
    maxq = torch.tensor([2.0**b - 1 for b in bl]).repeat_interleave(rows)[:, None]
    g = group_size or cols
    n_groups = _n_groups(cols, group_size)
    codes = torch.empty_like(wk)
    scales = torch.empty(wk.shape[0], n_groups)
    zeros = torch.empty(wk.shape[0], n_groups)
    for gi in range(n_groups):
        seg = wk[:, gi * g : (gi + 1) * g]
        s, z = _params(seg, maxq)
        scales[:, gi], zeros[:, gi] = s, z
        codes[:, gi * g : (gi + 1) * g] = torch.clamp(torch.round(seg / s[:, None]) + z[:, None], min=0).minimum(maxq)
    return _split(w, bl, codes, scales, zeros, group_size)


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
    bl = _bits_list(bits)
    rows, cols = w.shape
    u, dead = inverse_cholesky(h, damping)
    wk = w.detach().to(torch.float32).repeat(len(bl), 1)
    wk[:, dead] = 0.0
    keep = None if zero_mask is None else zero_mask.to(torch.bool).repeat(len(bl), 1)
    maxq = torch.tensor([2.0**b - 1 for b in bl]).repeat_interleave(rows)[:, None]
    g = group_size or cols
    n_groups = _n_groups(cols, group_size)
    codes = torch.empty_like(wk)
    scales = torch.empty(wk.shape[0], n_groups)
    zeros = torch.empty(wk.shape[0], n_groups)
    if group_size is None:
        scales[:, 0], zeros[:, 0] = _params(wk, maxq)
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
                scales[:, gi], zeros[:, gi] = _params(seg, maxq)
            col = w1[:, j]
            q = _round(col, scales[:, gi], zeros[:, gi], maxq)
            if keep is not None:
                q = torch.where(keep[:, c], zeros[:, gi], q)
            codes[:, c] = q
            e = (col - scales[:, gi] * (q - zeros[:, gi])) / u1[j, j]
            w1[:, j:] -= e[:, None] * u1[j, j:][None, :]
            err1[:, j] = e
        if i2 < cols:
            wk[:, i2:] -= err1 @ u[i1:i2, i2:]
    return _split(w, bl, codes, scales, zeros, group_size)


def pack_codes(codes: torch.Tensor, bits: int) -> np.ndarray:
    """Pack uint8 codes of ``bits`` bits each into a dense uint8 array (``ceil(numel·bits/8)`` bytes)."""
    c = codes.detach().cpu().numpy().astype(np.uint8).reshape(-1, 1)
    planes = np.unpackbits(c, axis=1)[:, 8 - bits :]
    return np.packbits(planes.reshape(-1))


def unpack_codes(packed: np.ndarray, bits: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`pack_codes`."""
    n = int(np.prod(shape))
    planes = np.unpackbits(np.asarray(packed, dtype=np.uint8))[: n * bits].reshape(n, bits)
    full = np.zeros((n, 8), dtype=np.uint8)
    full[:, 8 - bits :] = planes
    return torch.from_numpy(np.packbits(full, axis=1).reshape(shape))


QUANTIZERS = ("rtn", "gptq")
