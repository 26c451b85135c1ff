"""Print the held-out perplexity table of every ``bench/results/smollm2-*/results.json``.

.venv/bin/python bench/smollm2_table.py [bench/results]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ORDER = ("uniform", "owl", "dp", "random", "evopress")


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results")
    print(f"{'setting':16s} {'dense':>7s} " + " ".join(f"{m:>9s}" for m in ORDER) + "   EvoPress search")
    for f in sorted(root.glob("smollm2-*/results.json")):
        r = json.loads(f.read_text())
        ms = r["methods"]
        if r["method"] == "drop":  # heuristics, not uniform/OWL/DP: one line per method
            print(f"{'drop-' + format(r['target'], 'g'):16s} {r['dense']['heldout_ppl']:7.2f}   (held-out ppl)")
            for name, m in sorted(ms.items(), key=lambda kv: kv[1]["heldout_ppl"]):
                gens = f", {m['generations']} generations, {m['seconds']:.0f} s" if "generations" in m else ""
                print(f"{'':16s} {name:>13s} {m['heldout_ppl']:9.2f}{gens}")
            continue
        cells = " ".join(f"{ms[m]['heldout_ppl']:9.2f}" if m in ms else f"{'-':>9s}" for m in ORDER)
        evo = ms["evopress"]
        print(
            f"{r['method']}-{r['target']:<7g} {r['dense']['heldout_ppl']:7.2f} {cells}   "
            f"start {evo['start']}, {evo['generations']} gen, {evo['evaluations']} evals, "
            f"{evo['tokens']:.0f} tokens, {evo['seconds']:.0f} s; calib KL start->best: "
            f"{ms[evo['start']]['calibration_kl'] if evo['start'] in ms else float('nan'):.4f}->"
            f"{evo['calibration_kl']:.4f}"
        )
        db = r["database"]
        print(
            f"{'':16s} database {db['bytes'] / 2**20:.0f} MiB, compression {db['build_seconds']:.0f} s; "
            f"fitness pool {r.get('search_tokens', r['calibration_tokens'])} tokens, held-out {r['heldout_tokens']}"
        )


if __name__ == "__main__":
    main()
