"""Optimizer overhead per candidate (ask + tell, no fitness cost) at n = 100, 1,000 and 10,000 units.

Usage: python bench/overhead.py [--optimizers evopress,random,...] [--candidates 4000]

The fitness is a precomputed random vector lookup, so what is timed is the
optimizer's own work: mutation, duplicate checks, repair and selection. The
driver's cache/journal are not involved (see ``--driver`` to include the
in-memory driver loop as well).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import levelsearch as ls


def overhead(name: str, n: int, candidates: int, seed: int = 0) -> float:
    """Seconds per candidate for ask+tell of optimizer ``name`` on an n-unit, 2-level space (25% at level 1)."""
    space = ls.LevelSpace(2, n_units=n, total=n // 4)
    opt = ls.make_optimizer(name, space, seed=seed)
    rng = np.random.default_rng(seed)
    done = 0
    t0 = time.perf_counter()
    while done < candidates:
        batch = opt.ask()
        if not batch:
            break
        opt.tell(batch, rng.random(len(batch)).tolist())
        done += len(batch)
    return (time.perf_counter() - t0) / max(done, 1)


def driver_overhead(n: int, candidates: int) -> float:
    """Seconds per evaluation of the whole minimize loop (EvoPress, cache, no journal) on a trivial oracle."""
    space = ls.LevelSpace(2, n_units=n, total=n // 4)
    w = np.random.default_rng(0).random(n)
    t0 = time.perf_counter()
    res = ls.minimize(lambda lv: float(w @ lv), space, max_evaluations=candidates, seed=0)
    return (time.perf_counter() - t0) / res.n_evaluations


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--optimizers", default="evopress", help="comma-separated registered names")
    ap.add_argument("--candidates", type=int, default=4000)
    ap.add_argument("--driver", action="store_true", help="also time the minimize() loop")
    args = ap.parse_args()
    sizes = (100, 1_000, 10_000)
    print(f"{'optimizer':28s}" + "".join(f"{'n=' + format(n, ','):>14s}" for n in sizes) + "   (ms per candidate)")
    for name in args.optimizers.split(","):
        cells = [overhead(name, n, args.candidates) * 1e3 for n in sizes]
        print(f"{name:28s}" + "".join(f"{c:14.4f}" for c in cells))
    if args.driver:
        cells = [driver_overhead(n, args.candidates) * 1e3 for n in sizes]
        print(f"{'minimize(evopress) loop':28s}" + "".join(f"{c:14.4f}" for c in cells))


if __name__ == "__main__":
    main()
