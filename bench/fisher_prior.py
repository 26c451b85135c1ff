"""Experiment: a Fisher-weighted prior for weight codecs, against the database's normalised output errors.

For every unit and level, ``½ · Σ F ⊙ (W_level − W)² / tokens``: the second-order estimate of the KL per token
that the variant alone adds, with ``F`` the diagonal Fisher of the dense model's own predictive distribution
on the search pool (labels sampled from the model at every position, one backward pass per sequence and
sample; the cross terms of a sequence's summed gradient vanish in expectation, so its square is unbiased).
Prints the prior's and the database errors' dp solutions with their full-pool calibration KL, and the
additive predictions' Spearman correlation with the measured KLs of a journal's batches::

    .venv/bin/python bench/fisher_prior.py --task quant --journal bench/results/efficiency/quant/evopress-ref-s0.db
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from levelsearch import Request, solve_additive
from levelsearch.journal import Journal

DATA = {"calibration_tokens": 4096, "heldout_tokens": 4096, "seq_len": 256, "top_k": 256, "seed": 0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=["quant", "sparsity"], required=True)
    ap.add_argument("--samples", type=int, default=1, help="label samples per sequence")
    ap.add_argument("--kinds", nargs="+", default=["kfac", "diag"], help="Fisher approximations")
    ap.add_argument("--load", action="store_true", help="read the estimates --out holds instead of measuring them")
    ap.add_argument("--journal", help="journal whose full-pool batches the predictions are ranked against")
    ap.add_argument("--out", default="/tmp/fisher")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.task == "quant":
        from levelsearch.adapters.codecs.quant.problem import QuantProblem

        p = QuantProblem("smollm2", target=3.0, **DATA)
    else:
        from levelsearch.adapters.codecs.sparsity.problem import SparsityProblem

        p = SparsityProblem("smollm2", target=0.7, **DATA)
    from levelsearch.adapters.scoring.fisher import fisher_estimates

    priors = {}
    for kind in args.kinds:
        saved = out / f"{args.task}-{kind}.npy"
        if args.load and saved.exists():
            priors[kind] = np.load(saved)
            continue
        t0 = time.time()
        priors[kind], tokens = fisher_estimates(p, kind=kind, samples=args.samples)
        print(f"fisher {kind}: {tokens} token-equivalents, {time.time() - t0:.0f} s")
    for k, v in priors.items():
        np.save(out / f"{args.task}-{k}.npy", v)
    errs = p.layer_errors()
    ests = {**priors, "db-errors": errs}
    heur = json.loads(Path(f"bench/results/efficiency/{args.task}/heuristics.json").read_text())
    for name, est in ests.items():
        lv = solve_additive(p.space, np.nan_to_num(est, nan=np.inf))[0]
        kl = p.evaluate_many([Request(lv, None, 0)])[0]
        print(f"dp on {name}: calibration KL {kl:.4f}")
    for name, h in heur.items():
        lv = np.asarray(h["levels"])
        pf = {k: round(float(np.nansum(v[np.arange(len(lv)), lv])), 4) for k, v in priors.items()}
        print(f"{name}: measured {h['calibration_kl']:.4f}, additive {pf}")
    if args.journal:
        recs = [r for r in Journal(args.journal).records() if r.ok]
        batches: dict[tuple, list] = {}
        for r in recs:
            batches.setdefault((r.fidelity, r.sample), []).append(r)
        for name, est in ests.items():
            rhos = []
            for b in batches.values():
                if len(b) < 4:
                    continue
                pred = [np.nansum(est[np.arange(len(r.levels)), np.asarray(r.levels)]) for r in b]
                rho = spearmanr(pred, [r.value for r in b]).statistic
                if np.isfinite(rho):
                    rhos.append(rho)
            print(f"{name}: within-batch Spearman {np.mean(rhos):.3f} over {len(rhos)} batches")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
