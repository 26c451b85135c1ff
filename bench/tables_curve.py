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
        "| target | EvoPress KL | KL median | KL p99 | KL p99.9 | top-1 | ppl | best baseline (KL) | forward tokens |",
        "|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for p in curve["points"]:
        ms = p["methods"]
        ev = ms["evopress"]
        base = [n for n in ms if n != "evopress" and ms[n].get("feasible", True)]
        best = min(base, key=lambda n: ms[n]["heldout_kl"]) if base else None
        best_cell = f"{best} ({ms[best]['heldout_kl']:.4f})" if best else "–"
        rows.append(
            f"| {p['name'].split('-', 1)[1]} | {ev['heldout_kl']:.4f} | {ev['heldout_kl_median']:.4f} | "
            f"{ev['heldout_kl_p99']:.3f} | {ev['heldout_kl_p99_9']:.3f} | {100 * ev['heldout_top1']:.1f}% | "
            f"{ev['heldout_ppl']:.2f} | {best_cell} | {p['forward_tokens']:,} |"
        )
    ref = curve.get("reference", {})
    rows.append("")
    rows.append(
        f"Dense held-out perplexity {curve['dense']['heldout_ppl']:.2f}. The whole run: {curve['forward_tokens']:,} "
        f"forward tokens, {curve.get('token_ratio', float('nan')):.2f}x the {ref.get('forward_tokens', 0):,} of the "
        f"target-{ref.get('target', float('nan')):g} run alone, with {curve['generations']} generations per target; "
        f"wall time {curve.get('seconds', float('nan')) / 60:.0f} min vs {ref.get('seconds', float('nan')) / 60:.0f} "
        "min (a shared 2-core machine)."
    )
    return "\n".join(rows)


#: a table per committed curve (``bench/curve.py`` writes them; none is published before its file is committed)
TABLES = {
    name: (lambda name=name: curve_table(name))
    for name in ("curve-smollm2-quant", "curve-smollm2-gguf")
    if (RESULTS / name / "curve.json").is_file()
}
