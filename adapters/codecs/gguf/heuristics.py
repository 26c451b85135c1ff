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
    """``low`` with units raised to ``high`` in golden-ratio order while the bytes stay within the budget (units of
    the search: a tensor of experts is raised whole)."""
    total = float(problem.space.total)
    costs = problem.space.costs
    lv = low.copy()
    spent = problem.bytes_of(lv)
    order = np.argsort((np.arange(len(lv)) * _GOLDEN) % 1.0, kind="stable")
    for u in order:
        extra = int(costs[u, int(high[u])]) - int(costs[u, int(low[u])])
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


# ---------------------------------------------------------------------- llama.cpp's own llama-quantize
def _pins(problem: Any) -> list[str]:
    """``--tensor-type`` overrides keeping every 2-D tensor the run does not search in its source type, so that a
    llama-quantize file differs from the source only where the search chooses (llama-quantize copies a tensor
    asked for in its own type)."""
    import re

    return [f"^{re.escape(n)}$={t.lower()}" for n, t in sorted(problem.kept_tensor_types().items())]


def _levels_of_types(problem: Any, types: dict[str, str]) -> np.ndarray | None:
    """The search's levels giving each searched tensor its type in ``types`` (tensor name → type); ``None``
    when a tensor is missing, its type is not among its levels, or two tensors of one unit (a fused expert's
    ``ffn_gate_exps`` and ``ffn_up_exps``) have different types."""
    asked: dict[int, set[str | None]] = {}
    for g, parts in problem.tensor_parts.items():
        for u, _rows in parts:
            asked.setdefault(u, set()).add(types.get(g))
    out = []
    for u in range(len(problem.unit_names)):
        got = asked.get(u, {None})
        t = next(iter(got))
        if len(got) != 1 or t is None or t not in problem.unit_types[u]:
            return None
        out.append(problem.unit_types[u].index(t))
    return problem.search_levels(np.array(out, dtype=np.int64))


def _bytes_differ(problem: Any, levels: np.ndarray, path: Any) -> list[str]:
    """The searched tensors whose bytes in the GGUF file ``path`` are not the variant the search holds for them."""
    from gguf import GGUFReader

    from .export import chosen_tensors, tensor_data

    tensors = {t.name: t for t in GGUFReader(str(path)).tensors}
    differ = []
    for g, (parts, _qtype) in chosen_tensors(problem, levels).items():
        ours = tensor_data(problem, g, parts)
        raw = np.asarray(tensors[g].data).view(np.uint8)
        if raw.size != ours.size or not np.array_equal(raw.reshape(ours.shape), ours):
            differ.append(g)
    return differ


def nearest_mix(problem: Any, exe: Any, imatrix: Any, threads: int) -> tuple[str | None, dict[str, float]]:
    """The K-quant mix of llama-quantize (:data:`.llamacpp.K_MIXES`) whose bits per weight over the searched
    tensors are nearest the target (``--dry-run``: no file written), and every mix's bits per weight."""
    from .llamacpp import K_MIXES, dry_run_types, quantize

    bits: dict[str, float] = {}
    for mix in K_MIXES:
        out = quantize(exe, problem.source.path, problem.source.path, mix, imatrix=imatrix,
                       tensor_types=_pins(problem), threads=threads, dry_run=True)
        lv = _levels_of_types(problem, dry_run_types(out))
        if lv is not None:
            bits[mix] = problem.average_bits(lv)
    best = min(bits, key=lambda m: (abs(bits[m] - problem.target), bits[m])) if bits else None
    return best, bits


def llama_quantize_baselines(
    problem: Any, out_dir: Any, tools: dict[str, Any], threads: int = 1
) -> tuple[dict[str, tuple[np.ndarray, dict[str, Any], float]], dict[str, Any]]:
    """llama-quantize's own ``Q3_K_M``, ``Q4_K_M`` and the mix nearest the target, written by the built tool
    from the run's source file with the importance matrix the search quantized with (the legacy file of
    :func:`.export.write_imatrix`), every tensor the run does not search pinned to its source type.

    Returns ``(baselines, record)``: ``baselines`` name (``llama-quantize-MIX``) → ``(levels, info, seconds)``
    for each file whose searched tensors are, byte for byte, variants of the search (so our held-out pass of
    those levels is the file's); ``record`` what ran: each mix's file, size, types, seconds, or its failure in
    one line (a tool that fails is a failed baseline, never the end of the run).
    """
    from pathlib import Path

    from .export import write_imatrix
    from .llamacpp import LlamaToolError, gguf_tensor_types, quantize

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    im = write_imatrix(problem, out / "imatrix.dat")
    imatrix = Path(im["file"]) if im.get("written") else None
    record: dict[str, Any] = {"imatrix": im, "pinned_tensors": problem.kept_tensor_types(), "mixes": {}}
    baselines: dict[str, tuple[np.ndarray, dict[str, Any], float]] = {}
    mixes = list(STOCK_MIXES)
    try:
        nearest, bits = nearest_mix(problem, tools["llama-quantize"], imatrix, threads)
        record["mix_bits_per_weight"] = bits
        record["nearest_mix"] = nearest
        if nearest is not None and nearest not in mixes:
            mixes.append(nearest)
    except LlamaToolError as exc:
        record["nearest_mix"] = f"failed: {exc}"
    for mix in mixes:
        t0 = time.perf_counter()
        path = out / f"llama-quantize-{mix}.gguf"
        try:
            quantize(tools["llama-quantize"], problem.source.path, path, mix, imatrix=imatrix,
                     tensor_types=_pins(problem), threads=threads)
        except LlamaToolError as exc:
            record["mixes"][mix] = {"failed": str(exc)}
            print(f"levelsearch gguf: llama-quantize {mix}: {exc}", file=sys.stderr)
            continue
        seconds = time.perf_counter() - t0
        types = gguf_tensor_types(path)
        entry: dict[str, Any] = {"file": str(path), "file_bytes": path.stat().st_size, "seconds": seconds}
        lv = _levels_of_types(problem, types)
        if lv is None:
            entry["heldout"] = "not measured by our pass: a type llama-quantize chose is not among the levels"
        else:
            differ = _bytes_differ(problem, lv, path)
            entry["bytes_equal_to_the_search_variants"] = not differ
            if differ:
                entry["heldout"] = f"not measured by our pass: {len(differ)} tensors' bytes differ from our variants"
            else:
                info = {"rules": f"llama-quantize {mix} (llama.cpp's own tool)", "file": str(path)}
                baselines[f"llama-quantize-{mix}"] = (lv, info, seconds)
        record["mixes"][mix] = entry
    return baselines, record
