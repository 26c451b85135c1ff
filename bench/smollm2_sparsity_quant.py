"""SmolLM2-135M: dense vs uniform vs OWL vs DP vs best-of-N random vs EvoPress, held-out perplexity.

One setting per run (the databases of ``bench/smollm2_databases.py`` are reused or built)::

    .venv/bin/python bench/smollm2_sparsity_quant.py --setting sparsity-0.5 --budget-tokens 400000
    .venv/bin/python bench/smollm2_sparsity_quant.py --setting quant-2.5 --start random

Prints a table and writes ``bench/results/smollm2_<setting>.json`` plus a profile plot.
All selection (OWL's grid, random's best-of-N, EvoPress) uses calibration data only;
perplexity is measured on the disjoint held-out documents.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from levelsearch.adapters.quantization import QuantProblem
from levelsearch.adapters.sparsity import SparsityProblem, dp_levels, owl_search, random_levels

from levelsearch import minimize


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--setting", required=True, help="sparsity-0.5, sparsity-0.7, quant-3, quant-2.5 ...")
    ap.add_argument("--budget-tokens", type=float, default=400_000, help="EvoPress budget in calibration tokens")
    ap.add_argument("--start", default="dp", help="EvoPress start: dp, uniform or random")
    ap.add_argument("--offspring", type=int, default=16)
    ap.add_argument("--steps", default="512:2,2048:1", help="selection steps fidelity:survivors,...")
    ap.add_argument("--random-n", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    kind, target = args.setting.split("-")
    t0 = time.perf_counter()
    if kind == "sparsity":
        problem: SparsityProblem | QuantProblem = SparsityProblem(target=float(target))
    else:
        problem = QuantProblem(target=float(target))
    setup_s = time.perf_counter() - t0
    print(
        f"setup (model, data, teacher, database) {setup_s:.0f} s; database {problem.db.root} "
        f"{problem.db.size_bytes() / 2**20:.0f} MiB, built in {problem.db.manifest['build_seconds']:.0f} s",
        flush=True,
    )
    cands: dict[str, np.ndarray | None] = {"dense": None}
    info: dict[str, dict] = {}
    uni = problem.uniform_levels()
    if uni is not None:
        cands["uniform"] = uni
    if isinstance(problem, SparsityProblem):
        t = time.perf_counter()
        cands["owl"], info["owl"] = owl_search(problem, fidelity=2048, seed=args.seed)
        info["owl"]["seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    cands["dp"] = dp_levels(problem)
    info["dp"] = {"seconds": time.perf_counter() - t}
    if uni is None or args.start == "random":
        t = time.perf_counter()
        cands["random"] = random_levels(problem, n=args.random_n, fidelity=2048, seed=args.seed)
        info["random"] = {"n": args.random_n, "seconds": time.perf_counter() - t}
    start = cands.get(args.start, cands.get("random"))
    steps = [(int(a), int(b)) for a, b in (s.split(":") for s in args.steps.split(","))]
    t = time.perf_counter()
    res = minimize(
        problem,
        optimizer="evopress",
        max_cost=args.budget_tokens,
        seed=args.seed,
        progress=True,
        options={"offspring": args.offspring, "steps": steps, "start": start},
    )
    cands["evopress"] = res.best_levels
    info["evopress"] = {
        "seconds": time.perf_counter() - t,
        "evaluations": res.n_evaluations,
        "tokens": res.cost,
        "start": args.start,
        "offspring": args.offspring,
        "steps": steps,
    }
    names = list(cands)
    levels = [cands[n] for n in names]
    t = time.perf_counter()
    held = problem.heldout_report(levels)
    cal_kl, _ = problem.score(levels, "calibration")
    eval_s = time.perf_counter() - t
    rows = {}
    for n, lv, h, k in zip(names, levels, held, cal_kl):
        row = {**h, "calibration_kl": float(k), **info.get(n, {})}
        if lv is not None:
            row["feasible"] = bool(problem.space.is_feasible(lv))
            row["average"] = (
                problem.average_sparsity(lv) if isinstance(problem, SparsityProblem) else problem.average_bits(lv)
            )
            row["profile"] = problem.profile(lv).tolist()
        rows[n] = row
    print(f"\n{args.setting}: held-out perplexity ({problem.heldout.n_tokens} tokens), evaluation {eval_s:.0f} s")
    print(f"{'method':10s} {'ppl':>9s} {'held KL':>9s} {'calib KL':>9s} {'average':>8s}")
    for n, r in rows.items():
        print(
            f"{n:10s} {r['heldout_ppl']:9.2f} {r['heldout_kl']:9.4f} {r['calibration_kl']:9.4f} "
            f"{r.get('average', float('nan')):8.4f}"
        )
    print(f"EvoPress: {res.n_evaluations} evaluations, {res.cost:.0f} tokens, {info['evopress']['seconds']:.0f} s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "setting": args.setting,
        "units": problem.unit_names,
        "database_bytes": problem.db.size_bytes(),
        "database_build_seconds": problem.db.manifest["build_seconds"],
        "setup_seconds": setup_s,
        "heldout_tokens": problem.heldout.n_tokens,
        "calibration_tokens": problem.calibration.n_tokens,
        "methods": rows,
    }
    (out / f"smollm2_{args.setting}.json").write_text(json.dumps(summary, indent=1))
    _plot(rows, out / f"smollm2_{args.setting}.png", args.setting)


def _plot(rows: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 3.5))
    for n, r in rows.items():
        if "profile" in r:
            ax.plot(r["profile"], label=f"{n} ({r['heldout_ppl']:.1f})", lw=1)
    ax.set_xlabel("unit (q,k,v,o,gate,up,down per layer)")
    ax.set_ylabel("sparsity" if title.startswith("sparsity") else "bits")
    ax.set_title(f"SmolLM2-135M {title}: per-layer profile (held-out ppl)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
