"""The ``gguf`` codec's baselines, computed on calibration statistics only.

(Named ``heuristics`` as the drop codec's are: no module of ``adapters`` refers to the ``baselines`` package.)

- ``uniform-T``: the requested type ``T`` everywhere (llama.cpp's fallback where a row cannot hold it)
  whose bits per weight are nearest the target; usually outside the band (reported, never a start);
- ``mix-T1-T2``: the two uniform types around the target, the larger given to units in a low-discrepancy
  order over the model (golden-ratio sequence) while the budget holds: uniform interpolated to the band;
- ``llama.cpp-Q3_K_M`` / ``llama.cpp-Q4_K_M``: the stock mixes' rules (:func:`.source.llama_cpp_mix`),
  at their own size (equal to the target's only when the target is their size);
- ``dp``: knapsack on the imatrix-weighted per-tensor errors, assumed additive.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np

from .source import STOCK_MIXES

__all__ = ["gguf_baselines", "interpolate_levels"]

_GOLDEN = 0.6180339887498949


def interpolate_levels(problem: Any, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """``low`` with units raised to ``high`` in golden-ratio order while the bytes stay within the budget."""
    total = float(problem.space.total)
    lv = low.copy()
    spent = problem.bytes_of(lv)
    order = np.argsort((np.arange(len(lv)) * _GOLDEN) % 1.0, kind="stable")
    for u in order:
        extra = problem.level_bytes[u][int(high[u])] - problem.level_bytes[u][int(low[u])]
        if spent + extra <= total:
            lv[u] = high[u]
            spent += extra
    return lv


def gguf_baselines(problem: Any) -> dict[str, tuple[np.ndarray, dict[str, Any], float]]:
    """name → ``(levels, what was chosen, seconds)`` of every baseline (see the module docstring)."""
    out: dict[str, tuple[np.ndarray, dict[str, Any], float]] = {}
    n = len(problem.unit_names)
    t0 = time.perf_counter()
    uniform = {t: problem.levels_for([t] * n) for t in problem.types}
    bits = {t: problem.average_bits(lv) for t, lv in uniform.items()}
    nearest = min(problem.types, key=lambda t: (abs(bits[t] - problem.target), bits[t]))
    out[f"uniform-{nearest}"] = (uniform[nearest], {"type": nearest}, time.perf_counter() - t0)
    below = [t for t in problem.types if bits[t] <= problem.target]
    above = [t for t in problem.types if bits[t] >= problem.target]
    if below and above:
        lo = max(below, key=lambda t: bits[t])
        hi = min(above, key=lambda t: bits[t])
        if bits[lo] < bits[hi]:
            t0 = time.perf_counter()
            lv = interpolate_levels(problem, uniform[lo], uniform[hi])
            out[f"mix-{lo}-{hi}"] = (lv, {"types": [lo, hi]}, time.perf_counter() - t0)
    for mix in STOCK_MIXES:
        t0 = time.perf_counter()
        lv = problem.stock_mix(mix)
        if lv is None:
            print(
                f"levelsearch gguf: llama.cpp's {mix} asks for types outside {','.join(problem.types)}; "
                "its baseline is left out",
                file=sys.stderr,
            )
            continue
        out[f"llama.cpp-{mix}"] = (lv, {"rules": "llama.cpp " + mix}, time.perf_counter() - t0)
    t0 = time.perf_counter()
    out["dp"] = (problem.dp_levels(), {"errors": "imatrix-weighted"}, time.perf_counter() - t0)
    if problem.estimates == "fisher":
        t0 = time.perf_counter()
        lv = problem.dp_levels(problem.unit_errors())
        info = {"errors": "Fisher-weighted", "forward_tokens": problem.fisher_tokens}
        out["dp-fisher"] = (lv, info, time.perf_counter() - t0)
    return out
