"""The asymmetric min–max quantization grid, a quantized weight and its packed codes.

Quantization is per group of ``group_size`` consecutive input columns of each output row
(default 128; ``None`` = one group per row, i.e. per channel). An input width the group size
does not divide gets a shorter last group (SmolLM2's 576 = 4·128 + 64). A result keeps integer
codes plus per-group scales (fp32) and zero points, so a database stores ``bits`` bits per
weight, not a dense copy. Several bit-widths are handled in one pass by stacking the copies
as extra rows; :func:`split_levels` cuts them apart.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "Quantized",
    "bits_list",
    "minmax_params",
    "round_to_grid",
    "n_groups",
    "Stacked",
    "stack_levels",
    "split_levels",
    "pack_codes",
    "unpack_codes",
]


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


def bits_list(bits: Sequence[int]) -> list[int]:
    out = [int(b) for b in bits]
    for b in out:
        if not 1 <= b <= 8:
            raise ValueError(f"bit-widths must lie in 1..8, got {b}")
    return out


def minmax_params(x: torch.Tensor, maxq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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


def round_to_grid(col: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: torch.Tensor) -> torch.Tensor:
    m = maxq.squeeze(1)
    return torch.clamp(torch.round(col / scale) + zero, torch.zeros_like(m), m)


def n_groups(cols: int, group_size: int | None) -> int:
    if group_size is None:
        return 1
    if group_size < 1:
        raise ValueError(f"group_size must be a positive number of columns or None, got {group_size}")
    return math.ceil(cols / group_size)


@dataclass
class Stacked:
    """The copies of one weight for several bit-widths, stacked as rows, with their empty results.

    Attributes:
        bits: the bit-widths, one per copy.
        w: ``(len(bits)·out, in)`` fp32 copies (changed in place by GPTQ's updates).
        maxq: ``(len(bits)·out, 1)`` top code of each row (``2^bits − 1``).
        group: columns per group (``in`` for per channel).
        codes, scales, zeros: the results, filled by the quantizer.
    """

    bits: list[int]
    w: torch.Tensor
    maxq: torch.Tensor
    group: int
    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor


def stack_levels(w: torch.Tensor, bits: Sequence[int], group_size: int | None) -> Stacked:
    """One fp32 copy of ``w`` per bit-width as rows, their grid tops and empty codes, scales and zero points."""
    bl = bits_list(bits)
    rows, cols = w.shape
    wk = w.detach().to(torch.float32).repeat(len(bl), 1)
    maxq = torch.tensor([2.0**b - 1 for b in bl]).repeat_interleave(rows)[:, None]
    groups = n_groups(cols, group_size)
    scales = torch.empty(wk.shape[0], groups)
    return Stacked(bl, wk, maxq, group_size or cols, torch.empty_like(wk), scales, torch.empty_like(scales))


def split_levels(w: torch.Tensor, st: Stacked, group_size: int | None) -> list[Quantized]:
    """The stacked results of :func:`stack_levels` as one :class:`Quantized` per bit-width."""
    rows = w.shape[0]
    out = []
    for k, b in enumerate(st.bits):
        sl = slice(k * rows, (k + 1) * rows)
        out.append(
            Quantized(b, group_size, st.codes[sl].to(torch.uint8), st.scales[sl].clone(), st.zeros[sl].to(torch.uint8))
        )
    return out


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
