"""SmolLM2-135M: dense vs uniform vs OWL vs DP vs best-of-N random vs EvoPress, held-out perplexity.

Runs the ``levelsearch compress`` flow (:mod:`levelsearch.adapters.levelcompress`) for one
setting, reusing the databases of ``bench/smollm2_databases.py`` (same calibration pool of
8,192 tokens), and prints the table; ``OUT/results.json`` and ``OUT/profile.png`` hold the rest::

    .venv/bin/python bench/smollm2_sparsity_quant.py --setting sparsity-0.5 --search-minutes 12
    .venv/bin/python bench/smollm2_sparsity_quant.py --setting quant-2.5

All selection (OWL's grid, best-of-N random, EvoPress) sees calibration data only; perplexity is
measured on the disjoint held-out documents (4,096 tokens).
"""

from __future__ import annotations

import argparse
import time

import torch
from levelsearch.adapters.cli.compress import DEFAULTS
from levelsearch.adapters.levelcompress import run_quant, run_sparsity


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--setting", required=True, help="sparsity-0.5, sparsity-0.7, quant-3, quant-2.5 ...")
    ap.add_argument("--search-minutes", type=float, default=12.0)
    ap.add_argument("--search-tokens", type=int, default=2048, help="fitness pool (first tokens of calibration)")
    ap.add_argument("--heuristic-tokens", type=int, default=512, help="tokens for OWL grid / random best-of-N")
    ap.add_argument("--random-n", type=int, default=16)
    ap.add_argument("--offspring", type=int, default=16)
    ap.add_argument("--start", default="best-baseline")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    kind, target = args.setting.split("-")
    cfg = {
        **DEFAULTS,
        "method": kind,
        "target": float(target),
        "out": f"{args.out}/smollm2-{args.setting}",
        "calibration_tokens": 8192,
        "search_tokens": args.search_tokens,
        "heuristic_tokens": args.heuristic_tokens,
        "random_n": args.random_n,
        "offspring": args.offspring,
        "search_minutes": args.search_minutes,
        "generations": 10_000,
        "start": args.start,
        "seed": args.seed,
        "threads": args.threads,
        "export": False,
    }
    t0 = time.perf_counter()
    res = (run_sparsity if kind == "sparsity" else run_quant)(cfg)
    wall = time.perf_counter() - t0
    db = res["database"]
    print(
        f"\nSmolLM2-135M {args.setting}: database {db['bytes'] / 2**20:.0f} MiB built in {db['build_seconds']:.0f} s "
        f"(compression time); run {wall:.0f} s; held-out {res['heldout_tokens']} tokens; "
        f"fitness pool {res['search_tokens']} tokens"
    )
    print(f"{'method':10s} {'held ppl':>9s} {'held KL':>8s} {'calib KL':>9s} {'average':>8s} {'seconds':>8s}")
    print(f"{'dense':10s} {res['dense']['heldout_ppl']:9.2f}")
    for n, m in res["methods"].items():
        print(
            f"{n:10s} {m['heldout_ppl']:9.2f} {m['heldout_kl']:8.4f} {m['calibration_kl']:9.4f} "
            f"{m['average']:8.4f} {m['seconds']:8.0f}"
        )
    evo = res["methods"]["evopress"]
    print(
        f"EvoPress: start {evo['start']}, {evo['generations']} generations, {evo['evaluations']} evaluations, "
        f"{evo['tokens']:.0f} tokens, stopped by {evo['stopped_by']}"
    )


if __name__ == "__main__":
    main()
