"""Plot and tabulate ``bench/search_efficiency.py`` runs: calibration KL against forward tokens.

    .venv/bin/python bench/efficiency_plot.py bench/results/efficiency/drop

Writes ``efficiency.png`` in that folder and prints, per seed, the reference's final KL and tokens, and the
tokens ``evopress`` needed to reach that KL (and their ratio).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def _trace(path: Path) -> list[dict[str, float]]:
    return [p for p in json.loads(path.read_text())["trace"] if math.isfinite(p["kl"])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    args = ap.parse_args()
    runs = {p.stem: _trace(p) for p in sorted(args.folder.glob("evopress*-s*.json")) if not p.stem.endswith("summary")}
    seeds = sorted({int(k.rsplit("-s", 1)[1]) for k in runs})
    print("| seed | evopress-ref: final KL | its tokens | evopress: tokens to reach it | ratio |")
    print("|---|---|---|---|---|")
    for s in seeds:
        ref, new = runs.get(f"evopress-ref-s{s}"), runs.get(f"evopress-s{s}")
        if not ref or not (args.folder / f"evopress-ref-s{s}.summary.json").exists():
            print(f"| {s} | unfinished (no summary yet) | | | |")
            continue
        kl, tok = ref[-1]["kl"], ref[-1]["tokens"]
        need = next((p["tokens"] for p in new or [] if p["kl"] <= kl + 1e-12), math.inf)
        ratio = f"{need / tok:.2f}" if math.isfinite(need) else "not reached"
        print(f"| {s} | {kl:.4f} | {tok:,.0f} | {need:,.0f} | {ratio} |")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, tr in runs.items():
        if tr:
            style = "--" if name.startswith("evopress-ref") else "-"
            ax.step([p["tokens"] for p in tr], [p["kl"] for p in tr], style, where="post", label=name)
    ax.set_xlabel("forward tokens")
    ax.set_ylabel("calibration KL of the best so far")
    ax.set_title(f"{args.folder.name}: evopress vs evopress-ref")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.folder / "efficiency.png", dpi=120)
    print(f"wrote {args.folder / 'efficiency.png'}")


if __name__ == "__main__":
    main()
