"""Round-to-nearest weight quantization of one linear layer (no error feedback)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .grid import Quantized, minmax_params, split_levels, stack_levels

__all__ = ["rtn_quantize"]


@torch.no_grad()
def rtn_quantize(w: torch.Tensor, bits: Sequence[int], *, group_size: int | None = 128) -> list[Quantized]:
    """Round-to-nearest: each group's min–max grid, no error feedback. One result per bit-width."""
    st = stack_levels(w, bits, group_size)
    g = st.group
    for gi in range(st.scales.shape[1]):
        seg = st.w[:, gi * g : (gi + 1) * g]
        s, z = minmax_params(seg, st.maxq)
        st.scales[:, gi], st.zeros[:, gi] = s, z
        st.codes[:, gi * g : (gi + 1) * g] = torch.clamp(torch.round(seg / s[:, None]) + z[:, None], min=0).minimum(
            st.maxq
        )
    return split_levels(w, st, group_size)
