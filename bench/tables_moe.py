"""Published tables of the upcycled SmolLM2 mixture of experts (``python bench/upcycle.py --measure`` and
``--measure-gguf``), built from ``bench/results/moe-smollm2-quant-3/results.json`` and
``bench/results/moe-smollm2-gguf/results.json`` by ``bench/tables.py``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tables_smollm2 import markdown

RESULTS = Path(__file__).resolve().parent / "results"
RUN = "moe-smollm2-quant-3/results.json"
GGUF_RUN = "moe-smollm2-gguf/results.json"

NAMES = {
    "evopress": "**EvoPress**",
    "uniform": "uniform 3 bits",
    "dp": "dp on the layer errors",
    "dp-fisher": "dp on Fisher-weighted KL estimates",
    "random": "best of 16 random feasible",
}
#: parameters of a 30B mixture of experts (Qwen3-30B-A3B: 48 layers, 128 experts of 768 × 2048 × 3, top 8)
B30 = 30.5e9


def _read(rel: str) -> Any:
    return json.loads((RESULTS / rel).read_text())


CAL1024_RUN = "moe-smollm2-quant-3-cal1024/results.json"
#: the committed MoE runs whose peak memory the memory table sets side by side
MEMORY_RUNS = {
    RUN: "3 bits, GPTQ, 4,096 calibration tokens",
    CAL1024_RUN: "3 bits, GPTQ, 1,024 calibration tokens",
    GGUF_RUN: "GGUF at the Q3_K_M size, F16 source",
}


def _missing(rel: str = RUN) -> str | None:
    """A line saying how to make the run when its results file is not committed yet (checked without opening it)."""
    if (RESULTS / rel).is_file():
        return None
    return f"Not measured yet: `bench/results/{rel}` is made by `nice -n 5 python bench/upcycle.py --measure`."


def moe_quant3(rel: str = RUN) -> str:
    """Held-out perplexity and KL of EvoPress and the baselines at 3 bits on the upcycled SmolLM2 MoE."""
    missing = _missing(rel)
    if missing:
        return missing
    res = _read(rel)
    up = res["upcycled"]["heldout_ppl"]
    rows: list[list[object]] = [
        ["SmolLM2-135M, dense (before upcycling)", f"{up['smollm2']:.2f}", "", "", ""],
        ["upcycled MoE, uncompressed", f"{res['dense']['heldout_ppl']:.2f}", "0", "", ""],
    ]
    for name, m in sorted(res["methods"].items(), key=lambda kv: kv[1]["heldout_ppl"]):
        label = NAMES.get(name, name)
        if m.get("generations"):
            label += f" ({m['generations']} generations, {m['evaluations']} evaluations)"
        rows.append(
            [label, f"{m['heldout_ppl']:.2f}", f"{m['heldout_kl']:.3f}", f"{m['calibration_kl']:.3f}",
             f"{m['average']:.2f}"]
        )  # fmt: skip
    table = markdown(["method", "held-out ppl", "held-out KL", "calibration KL", "bits per weight"], rows)
    return (
        f"{table}\n\n{res['calibration_tokens']:,} calibration tokens (GPTQ's statistics and the fitness), "
        f"{res['heldout_tokens']:,} held out; {res['forward_tokens']:,} forward tokens; about "
        f"{float(res['timings']['total']) / 60:.0f} minutes of search, baselines and held-out reports (the variant "
        f"database's build, {float(res['database']['build_seconds']) / 60:.0f} minutes, apart)."
    )


def moe_memory() -> str:
    """Each committed MoE run's measured peak RSS per parameter, and the largest extrapolated to a 30B MoE."""
    runs = {rel: what for rel, what in MEMORY_RUNS.items() if (RESULTS / rel).is_file()}
    if not runs:
        return _missing() or ""
    rows: list[list[object]] = []
    worst = 0.0
    for rel, what in runs.items():
        res = _read(rel)
        rss = float(res["memory"]["peak_rss_mib"])
        n = float(res["upcycled"]["parameters"])
        per_param = rss * 2**20 / n
        worst = max(worst, per_param)
        label = f"upcycled SmolLM2 MoE, {what} (measured)"
        rows.append([label, f"{n / 1e6:.0f} M", f"{rss / 1024:.2f} GiB", f"{per_param:.1f}"])
    rows.append(
        ["30B MoE, the most of these per parameter, on CPU in fp32 (extrapolated)", f"{B30 / 1e9:.1f} B",
         f"{worst * B30 / 2**30:,.0f} GiB", f"{worst:.1f}"]
    )  # fmt: skip
    return markdown(["model and run", "parameters", "peak RSS", "bytes per parameter"], rows)


GGUF_NAMES = {
    "evopress": "**EvoPress**",
    "dp": "dp on the imatrix-weighted errors",
    "dp-fisher": "dp on Fisher-weighted KL estimates",
    "llama.cpp-Q3_K_M": "llama.cpp Q3_K_M rules (our reproduction)",
    "llama.cpp-Q4_K_M": "llama.cpp Q4_K_M rules (our reproduction)",
    "llama-quantize-Q3_K_M": "llama-quantize Q3_K_M (llama.cpp's tool)",
    "llama-quantize-Q4_K_M": "llama-quantize Q4_K_M (llama.cpp's tool)",
}


def _gguf_label(name: str) -> str:
    return GGUF_NAMES.get(name, name.replace("uniform-", "uniform ").replace("mix-", "mix of "))


def moe_gguf_q3km() -> str:
    """Held-out perplexity and KL of EvoPress and the baselines at llama.cpp's Q3_K_M size on the upcycled SmolLM2
    MoE as a GGUF file; baselines outside the run's size band are listed apart, after the ones in it."""
    if not (RESULTS / GGUF_RUN).is_file():
        return (
            f"Not measured yet: `bench/results/{GGUF_RUN}` is made by "
            "`nice -n 5 python bench/upcycle.py --measure-gguf`."
        )
    res = _read(GGUF_RUN)
    src = res["source_gguf"]
    rows: list[list[object]] = [
        [f"upcycled MoE, the source file ({src['dtype']})", "16.00", f"{res['dense']['heldout_ppl']:.2f}", "0", "", ""]
    ]
    methods = res["methods"]
    at_size = sorted((m["heldout_ppl"], n) for n, m in methods.items() if m.get("feasible"))
    above = sorted((m["heldout_ppl"], n) for n, m in methods.items() if not m.get("feasible"))
    for group, note in ((at_size, ""), (above, " — outside the size band")):
        for _ppl, name in group:
            m = methods[name]
            label = _gguf_label(name)
            if m.get("generations"):
                label += f" ({m['generations']} generations, {m['evaluations']} evaluations)"
            rows.append(
                [label + note, f"{m['bits_per_weight']:.4f}", f"{m['heldout_ppl']:.2f}", f"{m['heldout_kl']:.4f}",
                 f"{m['calibration_kl']:.4f}", f"{100 * m['heldout_top1']:.1f}%"]
            )  # fmt: skip
    table = markdown(
        ["method", "bits per weight", "held-out ppl", "held-out KL", "calibration KL", "held-out top-1"], rows
    )
    evo = methods["evopress"]["heldout_ppl"]
    best_name = min((n for _p, n in at_size if n != "evopress"), key=lambda n: methods[n]["heldout_ppl"])
    best = methods[best_name]["heldout_ppl"]
    verdict = "below" if evo < best else "not below"
    mem = res["memory"]["peak_rss_mib"] / 1024
    seconds = float(res["timings"]["total"])
    theirs = _llama_cpp_lines(res)
    return (
        f"{table}\n\nAt {src['target_bytes']:,} bytes of searched tensors (llama.cpp's {src['target_mix']} mix on "
        f"them), EvoPress's held-out perplexity {evo:.2f} is {verdict} every baseline in the size band (the best "
        f"of them: {_gguf_label(best_name)}, {best:.2f}). {res['forward_tokens']:,} forward tokens; peak RSS "
        f"{mem:.2f} GiB; about {seconds / 60:.0f} minutes on the 2-core machine the file's provenance names."
        f"{theirs}"
    )


def _llama_cpp_lines(res: dict[str, Any]) -> str:
    """llama.cpp's own measure of the written files (``llama-perplexity --kl-divergence`` against the source file,
    on its chunks of the held-out text), as a second table; empty when the run had no llama.cpp tools."""
    tools = (res.get("export") or {}).get("llama_tools") or {}
    files = tools.get("files") or {}
    if not files:
        return ""
    rows = [
        [_gguf_label(name) if name != "source" else "the source file", f"{f['file_bytes']:,}", f"{f['ppl']:.3f}",
         f"{f['kl_mean']:.4f}", f"{100 * f['top1']:.1f}%"]
        for name, f in sorted(files.items(), key=lambda kv: kv[1]["ppl"])
    ]  # fmt: skip
    table = markdown(["file (llama.cpp)", "bytes", "llama-perplexity", "mean KL", "top-1"], rows)
    evo = files.get("evopress", {}).get("ppl")
    others = {n: f["ppl"] for n, f in files.items() if n not in ("evopress", "source")}
    lower = [n for n, v in others.items() if evo is not None and v < evo]
    said = (
        "EvoPress's file is below every other file here"
        if not lower
        else f"EvoPress's file is not below {', '.join(_gguf_label(n) for n in sorted(lower))} here"
    )
    return (
        f"\n\nllama.cpp's own reading of the written files ({tools['scored_tokens']:,} scored tokens: "
        f"llama-perplexity at n_ctx {tools['n_ctx']} scores the second half of each chunk of the held-out text; "
        f"KL against the source file): {said}.\n\n{table}"
    )


TABLES = {
    "moe-quant-3": moe_quant3,
    "moe-quant-3-cal1024": lambda: moe_quant3(CAL1024_RUN),
    "moe-memory": moe_memory,
    "moe-gguf-q3km": moe_gguf_q3km,
}
