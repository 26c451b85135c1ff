"""Tables of the size–quality curves (``bench/curve.py``), built only from committed ``curve.json`` files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def _load(name: str) -> dict[str, Any]:
    return dict(json.loads((RESULTS / name / "curve.json").read_text()))


def curve_table(name: str) -> str:
    """Per target: EvoPress's held-out KL statistics and perplexity, the best baseline's KL, the forward tokens."""
    curve = _load(name)
    rows = [
        "| target | size (bpw) | EvoPress KL | KL median | KL p99 | KL p99.9 | top-1 | ppl | best baseline (KL) "
        "| EvoPress ≤ best | forward tokens |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|:-:|---:|",
    ]
    for p in curve["points"]:
        ms = p["methods"]
        ev = ms["evopress"]
        base = [n for n in ms if n != "evopress" and ms[n].get("feasible", True)]
        best = min(base, key=lambda n: ms[n]["heldout_kl"]) if base else None
        best_cell = f"{best} ({ms[best]['heldout_kl']:.5f})" if best else "–"
        at_most = "yes" if best is None or ev["heldout_kl"] <= ms[best]["heldout_kl"] else "no"
        bpw = f"{ev['bits_per_weight']:.3f}" if "bits_per_weight" in ev else "–"
        rows.append(
            f"| {p['name'].split('-', 1)[1]} | {bpw} | {ev['heldout_kl']:.5f} | {ev['heldout_kl_median']:.4f} | "
            f"{ev['heldout_kl_p99']:.3f} | {ev['heldout_kl_p99_9']:.3f} | {100 * ev['heldout_top1']:.1f}% | "
            f"{ev['heldout_ppl']:.2f} | {best_cell} | {at_most} | {p['forward_tokens']:,} |"
        )
    ref = curve.get("reference", {})
    rows.append("")
    rows.append(
        f"Dense held-out perplexity {curve['dense']['heldout_ppl']:.2f}. The whole run: {curve['forward_tokens']:,} "
        f"forward tokens, {curve.get('token_ratio', float('nan')):.2f}x the {ref.get('forward_tokens', 0):,} of the "
        f"target-{ref.get('target', float('nan')):g} run alone, with {curve['generations']} generations per target; "
        + (
            "the curve run was stopped and resumed, so its wall time is not comparable; the run alone took "
            f"{ref.get('seconds', float('nan')) / 60:.0f} min (a shared 2-core machine)."
            if curve.get("seconds_note")
            else f"wall time {curve.get('seconds', float('nan')) / 60:.0f} min vs "
            f"{ref.get('seconds', float('nan')) / 60:.0f} min (a shared 2-core machine)."
        )
    )
    return "\n".join(rows)


def kl_check_table(name: str) -> str:
    """Our held-out KL statistics of one GGUF file against llama-perplexity's on the same tokens, both ways
    (``bench/gguf_llama_check.py``: as each tool computes by default, and like for like)."""
    r = dict(json.loads((RESULTS / "kl-check" / f"{name}.json").read_text()))
    d, m = r["ways"]["default"], r["ways"]["matched"]
    rows = [
        "| statistic | ours | llama-perplexity | ours / llama.cpp − 1 | ours, llama.cpp's rounding | llama-perplexity "
        "-fa off | ours / llama.cpp − 1 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    labels = {
        "kl_mean": "mean KL",
        "kl_median": "median KL",
        "kl_p99": "KL 99%",
        "kl_p99_9": "KL 99.9%",
        "top1": "same top token",
        "ppl": "perplexity",
    }
    for key, label in labels.items():
        fmt = "{:.2%}" if key == "top1" else "{:.4f}" if key == "ppl" else "{:.5f}"
        cells = [
            f"{fmt.format(w['ours'][key])} | {fmt.format(w['llama_perplexity'][key])} | {w['relative_gap'][key]:+.2%}"
            for w in (d, m)
        ]
        rows.append(f"| {label} | {cells[0]} | {cells[1]} |")
    rows.append("")
    rows.append(
        f"`{r['file']}` of the run at {r['target']:g} bits per weight ({r['model']}): {r['chunks']} chunks of "
        f"{r['n_ctx']} tokens, {r['scored_positions']:,} scored positions (the second half of each chunk); ours from "
        f"the source's top-{r['top_k']} tokens plus a tail bin. Left: each tool as it computes by default; right: like "
        f"for like. Within {r['tol']:.0%} like for like: mean KL {'yes' if r['within_tol']['kl_mean'] else 'no'}, "
        f"top-1 {'yes' if r['within_tol']['top1'] else 'no'}."
    )
    return "\n".join(rows)


#: a table per committed curve (``bench/curve.py`` writes them; none is published before its file is committed)
TABLES = {
    name: (lambda name=name: curve_table(name))
    for name in ("curve-smollm2-quant", "curve-smollm2-gguf")
    if (RESULTS / name / "curve.json").is_file()
}
TABLES.update(
    {
        f"kl-check-{path.stem}": (lambda stem=path.stem: kl_check_table(stem))
        for path in sorted((RESULTS / "kl-check").glob("*.json"))
    }
)
