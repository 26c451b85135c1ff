"""Cost of swapping weight variants in a sparsity / quantization search, with and without the decode cache.

EvoPress's offspring differ from their parent in a few layers, and the prefix tree that
evaluates a batch swaps each layer's weights in and out once per branch and chunk. This
benchmark evaluates the same stream of EvoPress-like batches (``--offspring`` children of
the uniform or a random parent, one to three level switches each, on ``--tokens``
calibration tokens) on SmolLM2's ``llm-quant`` (or ``llm-sparsity``) problem with the
database's decoded-weight cache disabled and enabled, alternating A, B, A, B so that load
from other processes hits both sides, and prints seconds per batch and the speed-up.

    .venv/bin/python bench/db_swap.py [--kind quant|sparsity] [--batches 4] [--tokens 512]

The database is built on first use (about 5 min for quant, 15 min for sparsity here) and
reused afterwards (``bench/smollm2_databases.py`` builds the same ones).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from levelsearch.adapters.weights.database import VariantDatabase

from levelsearch import Request


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kind", choices=("quant", "sparsity"), default="quant")
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--offspring", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.kind == "quant":
        from levelsearch.adapters.codecs.quant.problem import QuantProblem

        prob = QuantProblem("smollm2", target=3.0, calibration_tokens=8192, heldout_tokens=256)
    else:
        from levelsearch.adapters.codecs.sparsity.problem import SparsityProblem

        prob = SparsityProblem("smollm2", target=0.5, calibration_tokens=8192, heldout_tokens=256)
    space = prob.space
    # two handles on the same files; the problem asks whichever is its ``db`` for weights
    dbs = {"no cache": VariantDatabase(prob.db.root, cache_bytes=0), "cache": VariantDatabase(prob.db.root)}
    rng = np.random.default_rng(0)
    parent = space.uniform()
    if parent is None:
        parent = space.sample(rng)
    batches = []
    for b in range(args.batches):
        switches = [int(min(rng.integers(1, 4), rng.integers(1, 4))) for _ in range(args.offspring)]
        kids = [space.switch(parent, rng, m) for m in switches]
        batches.append([Request(k, args.tokens, b) for k in kids])
    seconds = {"no cache": 0.0, "cache": 0.0}
    values: dict[str, list[float]] = {"no cache": [], "cache": []}
    prob.evaluate_many(batches[0][:1])  # warm-up: threads, kwargs capture
    for batch in batches:
        for side in ("no cache", "cache"):
            prob.db = dbs[side]
            prob.db.forget()  # the model holds the other handle's weights: load every unit afresh
            t0 = time.perf_counter()
            values[side] += prob.evaluate_many(batch)
            seconds[side] += time.perf_counter() - t0
    n = len(batches)
    print(
        f"SmolLM2 llm-{args.kind}: {len(prob.unit_names)} units, {args.offspring} offspring x {args.tokens} tokens "
        f"per batch, {torch.get_num_threads()} threads"
    )
    print(f"decode every swap:          {seconds['no cache'] / n:6.2f} s per batch")
    print(
        f"decoded-weight cache:       {seconds['cache'] / n:6.2f} s per batch "
        f"({dbs['cache'].cached_bytes / 2**20:.0f} MiB cached, bound {dbs['cache'].cache_bytes / 2**20:.0f} MiB)"
    )
    print(f"speed-up:                   x{seconds['no cache'] / seconds['cache']:.2f}")
    print(f"same values both ways:      {np.allclose(values['no cache'], values['cache'], rtol=0, atol=1e-6)}")


if __name__ == "__main__":
    main()
