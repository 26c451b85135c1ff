"""Published tables of SmolLM2-135M runs (``levelsearch compress``, ``bench/search_efficiency.py``), built from the
committed files under ``bench/results/`` by ``bench/tables.py``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def _read(rel: str) -> Any:
    return json.loads((RESULTS / rel).read_text())


def markdown(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _ppl(x: float) -> str:
    return f"{x:,.0f}" if x >= 1000 else f"{x:.2f}"


def _int(x: float) -> str:
    return f"{int(round(x)):,}"


def _generations(n: int) -> str:
    return f"{n} generation" + ("" if n == 1 else "s")


# --- depth compression: the demo's problem --------------------------------------------------------------------

DROP_NAMES = {
    "evopress": "**EvoPress**",
    "angular": "angular distance (Gromov et al.), consecutive window",
    "shortgpt": "ShortGPT, whole layers",
    "single-kl": "single-drop KL ranking (the additive choice)",
    "shortgpt-sub": "ShortGPT per sub-block",
    "random": "random feasible",
}


def smollm2_drop() -> str:
    """Held-out perplexity and KL of every method on SmolLM2-135M, 25% of sub-blocks dropped."""
    res = _read("smollm2-drop-0.25/results.json")
    rows: list[list[object]] = [["dense", _ppl(res["dense"]["heldout_ppl"]), "0", "0"]]
    for name, m in sorted(res["methods"].items(), key=lambda kv: kv[1]["heldout_ppl"]):
        label = DROP_NAMES.get(name, name)
        if m.get("generations"):
            # a run of the reference algorithm schedules no screening of mutants by a surrogate
            kind = "" if "screen" in res["schedule"] else "reference algorithm, "
            label += f" ({kind}{_generations(m['generations'])}, {m['evaluations']} evaluations)"
        rows.append([label, _ppl(m["heldout_ppl"]), f"{m['heldout_kl']:.3f}", f"{m['calibration_kl']:.3f}"])
    return markdown(["method", "held-out ppl", "held-out KL", "calibration KL"], rows)


# --- the search in work: evopress against evopress-ref on the real oracle ------------------------------------


def efficiency_drop() -> str:
    """Per seed: evopress-ref's final calibration KL and tokens, the tokens evopress needed to reach that KL."""
    rows = []
    for seed in (0, 1, 2):
        ref = _read(f"efficiency/drop/evopress-ref-s{seed}.summary.json")
        new = _read(f"efficiency/drop/evopress-s{seed}.summary.json")
        rows.append([
            seed, f"{ref['calibration_kl']:.4f}", _int(ref["tokens"]), _int(new["tokens"]),
            f"{new['tokens'] / ref['tokens']:.2f}", f"{ref['heldout_ppl']:.2f} / {new['heldout_ppl']:.2f}",
        ])
    return markdown(["seed", "evopress-ref: final KL", "its tokens", "evopress: tokens to reach it", "ratio",
                     "held-out ppl ref / evopress"], rows)


def efficiency_weights() -> str:
    """3 bits (GPTQ 2-6) and 70% sparsity (SparseGPT), seed 0: the same measure as efficiency_drop."""
    rows = []
    for task, label in (("quant", "3 bits (GPTQ 2–6)"), ("sparsity", "70% sparsity (SparseGPT)")):
        ref = _read(f"efficiency/{task}/evopress-ref-s0.summary.json")
        new = _read(f"efficiency/{task}/evopress-s0.summary.json")
        rows.append([
            label, f"{ref['calibration_kl']:.4f}", _int(ref["tokens"]),
            f"{_int(new['tokens'])} ({_generations(new['generations'])}, KL {new['calibration_kl']:.4f})",
            f"{new['tokens'] / ref['tokens']:.2f}", f"{ref['heldout_ppl']:.2f} / {new['heldout_ppl']:.2f}",
        ])
    return markdown(["task", f"evopress-ref after {ref['generations']} generations", "its tokens",
                     "evopress reaches it after", "ratio", "held-out ppl ref / evopress"], rows)


def efficiency_budget() -> str:
    """Where evopress ends when given a fixed share of the reference's tokens."""
    rows = []
    for rel, task, ref_rel in (
        ("efficiency-250k/quant/evopress-s0.summary.json", "3 bits, seed 0", "efficiency/quant/evopress-ref-s0"),
        ("efficiency-half/drop/evopress-s2.summary.json", "drop 25%, seed 2", "efficiency/drop/evopress-ref-s2"),
    ):
        run, ref = _read(rel), _read(f"{ref_rel}.summary.json")
        rows.append([
            task, _int(run["tokens"]), run["generations"], f"{run['calibration_kl']:.4f}",
            f"{run['heldout_ppl']:.2f}", f"{ref['calibration_kl']:.4f} ({_int(ref['tokens'])})",
            f"{ref['heldout_ppl']:.2f}",
        ])
    return markdown(["task", "evopress tokens", "generations", "calibration KL", "held-out ppl",
                     "evopress-ref KL (tokens)", "evopress-ref held-out ppl"], rows)


# --- dynamic GGUF -------------------------------------------------------------------------------------------

GGUF_NAMES = {
    "evopress": "**EvoPress**",
    "dp-fisher": "dp on Fisher-weighted KL estimates",
    "dp": "dp on imatrix-weighted errors",
    "llama.cpp-Q3_K_M": "llama.cpp Q3_K_M rules",
    "llama.cpp-Q4_K_M": "llama.cpp Q4_K_M rules",
}


def _gguf(folder: str) -> str:
    res = _read(f"gguf-smollm2/{folder}/results.json")
    rows = []
    for name, m in sorted(res["methods"].items(), key=lambda kv: kv[1]["heldout_kl"]):
        label = GGUF_NAMES.get(name, name.replace("uniform-", "nearest uniform: ").replace("mix-", "uniform mix "))
        if m.get("generations"):
            label += f" ({_generations(m['generations'])}, {m['evaluations']} evaluations, from {m['start']})"
        rows.append([label, f"{m['bits_per_weight']:.4f}", f"{m['file_bytes'] / 1e6:.2f}", f"{m['heldout_ppl']:.3f}",
                     f"{m['heldout_kl']:.4f}", f"{m['calibration_kl']:.4f}"])
    llama = res["export"].get("llama_cpp")
    if isinstance(llama, dict):
        rows.append([f"EvoPress's `model.gguf` run by llama.cpp (ours: {llama['ours']:.3f})", "", "",
                     f"{llama['heldout_ppl']:.3f}", "", ""])
    return markdown(["method", "bits/weight", "file MB", "held-out ppl", "held-out KL", "calibration KL"], rows)


def gguf_q3km() -> str:
    """SmolLM2 GGUF at the size of llama.cpp's Q3_K_M mix (4.634375 bits per searched weight)."""
    return _gguf("fisher-t4.634375")


def gguf_q4km() -> str:
    """SmolLM2 GGUF at the size of llama.cpp's Q4_K_M mix (5.534375 bits per searched weight)."""
    return _gguf("fisher-t5.534375")


TABLES = {
    "smollm2-drop": smollm2_drop,
    "efficiency-drop": efficiency_drop,
    "efficiency-weights": efficiency_weights,
    "efficiency-budget": efficiency_budget,
    "gguf-q3km": gguf_q3km,
    "gguf-q4km": gguf_q4km,
}
