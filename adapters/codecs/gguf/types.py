"""ggml quant types for the ``gguf`` codec: names, exact sizes, llama.cpp's fallbacks, quantize and dequantize.

Quantization is ggml's reference code through ``libgguf`` (the bytes llama.cpp's ``llama-quantize``
writes, K-quants and importance matrix included); dequantization is ``gguf``-py's, the reader the
export is checked with, so the weights a search evaluates are exactly what a reader of the file gets.

A row length a type cannot hold (a K-quant needs a multiple of 256 weights per row, SmolLM2-135M's
rows are 576 long) gets the type llama.cpp itself writes instead (``tensor_type_fallback`` in
``src/llama-quant.cpp``, ggml-org/llama.cpp at commit 007dbbf3fd17): Q2_K and Q3_K become Q4_0,
Q4_K becomes Q5_0, Q5_K becomes Q5_1, Q6_K becomes Q8_0, the 256-block IQ types IQ4_NL; a row the
fallback cannot hold either is written in F16, as llama.cpp does.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_TYPES",
    "FALLBACK",
    "bits_per_weight",
    "check_types",
    "dequantize",
    "dequantize_fast",
    "effective_type",
    "quantize",
    "row_bytes",
    "supported_types",
    "tensor_bytes",
]

#: the levels of the ``gguf`` codec unless the user passes others (smallest first)
DEFAULT_TYPES = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0")

#: llama.cpp's replacement of a type whose block does not divide a row (see the module docstring)
FALLBACK = {
    **{t: "IQ4_NL" for t in ("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_XS")},
    **{t: "Q4_0" for t in ("Q2_K", "Q3_K", "TQ1_0", "TQ2_0")},
    "Q4_K": "Q5_0",
    "Q5_K": "Q5_1",
    "Q6_K": "Q8_0",
}

_STORED = ("F16",)  # unquantized storage types a row may end up in (llama.cpp's last resort)


def _qt(name: str) -> Any:
    from gguf import GGMLQuantizationType

    return GGMLQuantizationType[name]


@lru_cache(maxsize=1)
def supported_types() -> tuple[str, ...]:
    """Quant types both libgguf quantizes and gguf-py dequantizes, smallest bits per weight first."""
    import libgguf
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf.quants import _type_traits

    names = []
    for qt, (block, _size) in GGML_QUANT_SIZES.items():
        if block <= 1 or qt not in _type_traits or qt == GGMLQuantizationType.Q8_K:
            continue  # Q8_K is ggml's dot-product intermediate, not a storage type
        if libgguf.row_size(int(qt), block) > 0:
            names.append(qt.name)
    return tuple(sorted(names, key=lambda n: (bits_per_weight(n), n)))


def bits_per_weight(name: str) -> float:
    """Bits per weight of ``name`` on a row it holds (block bytes × 8 / block size)."""
    from gguf import GGML_QUANT_SIZES

    block, size = GGML_QUANT_SIZES[_qt(name)]
    return 8.0 * size / block


def check_types(types: Any) -> list[str]:
    """The type names of ``types`` (a list or a comma-separated string), upper-cased, checked, smallest first.

    Raises:
        ValueError: an empty list, a repeated name, or a name that is not a quant type libgguf and gguf-py
            both handle (the supported ones are listed).
    """
    if isinstance(types, str):
        types = [t for t in types.split(",") if t.strip()]
    if not isinstance(types, (list, tuple)) or not types:
        raise ValueError("gguf types must be a non-empty list of ggml quant types, e.g. Q2_K,Q3_K,Q4_K,Q6_K")
    ok = supported_types()
    names = [str(t).strip().upper() for t in types]
    for n in names:
        if n not in ok:
            raise ValueError(f"unsupported gguf quant type {n!r}; supported: {', '.join(ok)}")
    if len(set(names)) != len(names):
        raise ValueError(f"gguf types must not repeat, got {', '.join(names)}")
    return sorted(names, key=lambda n: (bits_per_weight(n), n))


def _holds(name: str, n_per_row: int) -> bool:
    from gguf import GGML_QUANT_SIZES

    return n_per_row > 0 and n_per_row % GGML_QUANT_SIZES[_qt(name)][0] == 0


def effective_type(name: str, n_per_row: int) -> str:
    """The type llama.cpp writes when asked for ``name`` on rows of ``n_per_row`` weights (see the module docstring)."""
    if _holds(name, n_per_row):
        return name
    fb = FALLBACK.get(name)
    return fb if fb is not None and _holds(fb, n_per_row) else "F16"


def row_bytes(name: str, n_per_row: int) -> int:
    """Exact bytes of one row of ``n_per_row`` weights in type ``name`` (which must hold the row)."""
    from gguf import GGML_QUANT_SIZES

    block, size = GGML_QUANT_SIZES[_qt(name)]
    if n_per_row % block:
        raise ValueError(f"type {name} cannot hold rows of {n_per_row} weights (block {block})")
    return n_per_row // block * size


def tensor_bytes(name: str, shape: tuple[int, int]) -> int:
    """Exact bytes of an ``(rows, n_per_row)`` tensor in type ``name``."""
    return int(shape[0]) * row_bytes(name, int(shape[1]))


def quantize(w: np.ndarray, name: str, imatrix: np.ndarray | None) -> np.ndarray:
    """ggml's quantization of the rows of ``w`` (``rows × n_per_row`` fp32) to ``name``: uint8 ``rows × row bytes``.

    ``imatrix`` (per input channel, mean squared activation: llama.cpp's importance matrix) weights
    the rounding error of the types that use one (K-quants, IQ types); ``None`` quantizes as
    ``llama-quantize`` without ``--imatrix`` does.
    """
    import libgguf

    rows = np.ascontiguousarray(w, dtype=np.float32)
    if name in _STORED:
        return rows.astype(np.float16).view(np.uint8).reshape(rows.shape[0], -1)
    im = None if imatrix is None else np.ascontiguousarray(imatrix, dtype=np.float32)
    out = libgguf.quantize_rows(rows, int(_qt(name)), imatrix=im)
    if out.shape != (rows.shape[0], row_bytes(name, rows.shape[1])):
        raise RuntimeError(f"libgguf returned {out.shape} bytes for a {rows.shape} tensor in {name}")
    return out


def dequantize(data: np.ndarray, name: str) -> np.ndarray:
    """gguf-py's dequantization of uint8 ``rows × row bytes`` in type ``name``: fp32 ``rows × n_per_row``."""
    from gguf import quants

    raw = np.ascontiguousarray(data, dtype=np.uint8)
    if name in _STORED:
        return raw.view(np.float16).astype(np.float32)
    return np.asarray(quants.dequantize(raw, _qt(name)), dtype=np.float32)


def dequantize_fast(data: np.ndarray, name: str) -> np.ndarray:
    """ggml's own dequantization (libgguf, C): the same values as :func:`dequantize` (tested for every default
    type), 2-3x faster; what the search decodes with. The export check compares gguf-py's values of the
    written file with the weights the search evaluated, so the two can never silently differ."""
    import libgguf

    raw = np.ascontiguousarray(data, dtype=np.uint8)
    if name in _STORED:
        return raw.view(np.float16).astype(np.float32)
    n_per_row = raw.shape[1] // row_bytes(name, _block(name)) * _block(name)
    return np.asarray(libgguf.dequantize_rows(raw, int(_qt(name)), n_per_row), dtype=np.float32)


def _block(name: str) -> int:
    from gguf import GGML_QUANT_SIZES

    return int(GGML_QUANT_SIZES[_qt(name)][0])
