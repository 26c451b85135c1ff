"""The ``gguf`` budget's reachable range: what a set of types can give the searched tensors, in bytes and in
bits per weight, with llama.cpp's fallbacks for row lengths applied (checked before a database is built)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...model.units import unit_weight
from .types import effective_type, tensor_bytes

__all__ = ["check_target_range", "reachable_bytes"]


def reachable_bytes(units: Sequence[tuple[str, int, Any]], types: Sequence[str]) -> tuple[int, int, int]:
    """``(smallest, largest, weights)``: the bytes the weight tensors ``units`` (``(name, layer, module)``) take
    all in their smallest and all in their largest of ``types`` (llama.cpp's fallbacks for row lengths applied),
    and how many weights they hold."""
    lo = hi = n = 0
    for _name, _layer, mod in units:
        rows, cols = unit_weight(mod).shape  # out × in: a row is an output's weights
        shape = (int(rows), int(cols))
        sizes = [tensor_bytes(effective_type(t, shape[1]), shape) for t in types]
        lo, hi, n = lo + min(sizes), hi + max(sizes), n + int(mod.weight.numel())
    return lo, hi, n


def check_target_range(
    units: Sequence[tuple[str, int, Any]], types: Sequence[str], target: float, *, target_bytes: int | None = None
) -> None:
    """``ValueError`` naming the reachable range when ``target`` bits per weight (or ``target_bytes`` bytes, when
    given) is outside what ``types`` give the weight tensors ``units`` (``(name, layer, module)``), llama.cpp's
    fallbacks for row lengths applied."""
    lo, hi, n = reachable_bytes(units, types)
    if target_bytes is not None:
        if not lo <= target_bytes <= hi:
            raise ValueError(
                f"--target-bytes {target_bytes:,} is outside what the types {','.join(types)} reach on this "
                f"model's searched tensors ({lo:,}..{hi:,} bytes, {8.0 * lo / n:.3f}..{8.0 * hi / n:.3f} bits per "
                "weight, llama.cpp's fallbacks for row lengths applied)"
            )
        return
    lo_b, hi_b = 8.0 * lo / n, 8.0 * hi / n
    if not lo_b <= target <= hi_b:
        raise ValueError(
            f"--target {target:g} bits per weight is outside what the types {','.join(types)} reach on this "
            f"model ({lo_b:.3f}..{hi_b:.3f} bits per weight, llama.cpp's fallbacks for row lengths applied)"
        )
