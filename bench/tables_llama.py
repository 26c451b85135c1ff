"""Tables of llama.cpp's own KL statistics of GGUF files (``bench/llama_compare.py``'s results)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "llamacpp"
LABELS = {"dp-fisher": "dp-fisher (its types by llama-quantize)", "evopress": "EvoPress (its types by llama-quantize)"}


def _num(x: Any, fmt: str) -> str:
    return "" if x is None else format(float(x), fmt)


def _table(model: str) -> str:
    # ``+ 0.0``: llama-perplexity prints a KL of exactly zero as -0.0
    res = json.loads((RESULTS / f"{model}.json").read_text())
    head = ("| size | file | searched bits/weight | file MB | mean KL | median KL | p99 KL | top-1 | PPL "
            "| our held-out KL |")
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    src = res["source"]
    lines.append(f"| | source ({src['file']}) | | {src['file_bytes'] / 1e6:.2f} | 0 | 0 | 0 | 100% "
                 f"| {src['ppl']:.3f} | 0 |")
    for mix, size in res["sizes"].items():
        run = json.loads((RESULTS.parent / size["run"] / "results.json").read_text())["methods"]
        for name, row in size["rows"].items():
            if "not_run" in row:
                lines.append(f"| {mix} | {name} | not in llama-cpp-python {res['llama_cpp_python']} "
                             "(no --target-bpw) | | | | | | | |")
                continue
            if "failed" in row:
                lines.append(f"| {mix} | {LABELS.get(name, name)} | failed: {row['failed']} | | | | | | | |")
                continue
            ours = (row.get("ours") or {}).get("heldout_kl")
            if name.startswith("llama-quantize "):  # our reproduction of the mix: the same types (tested)
                ours = run.get(f"llama.cpp-{mix}", {}).get("heldout_kl")
            lines.append(
                f"| {mix} | {LABELS.get(name, name)} | {row['bits_per_weight']:.3f} | {row['file_bytes'] / 1e6:.2f} "
                f"| {row['kl_mean'] + 0.0:.4f} | {row['kl_median'] + 0.0:.4f} | {row['kl_p99'] + 0.0:.4f} "
                f"| {100 * row['top1']:.2f}% "
                f"| {row['ppl']:.3f} | {_num(ours, '.4f')} |"
            )
    return "\n".join(lines)


def llama_smollm2() -> str:
    return _table("smollm2")


def llama_gemma3() -> str:
    return _table("gemma3")


TABLES = {"llama-smollm2": llama_smollm2, "llama-gemma3": llama_gemma3}
