"""Optimizer overhead per candidate (ask + tell, no fitness cost) at n = 100, 1,000 and 10,000 units.

Usage: python bench/overhead.py [--optimizers evopress,random,...] [--candidates 4000]

An optimizer may carry options after a colon: ``evopress:surrogate=false`` (values read as YAML).
For ``evopress`` the surrogate's own seconds per generation are printed too.

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


def _parse(spec: str) -> tuple[str, dict[str, object]]:
    import yaml

    name, _, rest = spec.partition(":")
    opts = {}
    for kv in filter(None, rest.split(";")):
        k, _, v = kv.partition("=")
        opts[k] = yaml.safe_load(v)
    return name, opts


def overhead(spec: str, n: int, candidates: int, seed: int = 0) -> tuple[float, float]:
    """Seconds per candidate for ask+tell of optimizer ``spec`` on an n-unit, 2-level space (25% at level 1),
    and the surrogate's seconds per generation (NaN without one)."""
    space = ls.LevelSpace(2, n_units=n, total=n // 4)
    name, opts = _parse(spec)
    opt = ls.make_optimizer(name, space, seed=seed, **opts)
    rng = np.random.default_rng(seed)
    done = 0
    t0 = time.perf_counter()
    while done < candidates:
        batch = opt.ask()
        if not batch:
            break
        opt.tell(batch, rng.random(len(batch)).tolist())
        done += len(batch)
    per_gen = getattr(opt, "surrogate_seconds", float("nan")) / max(getattr(opt, "generation", 0), 1)
    if getattr(opt, "surrogate", None) is None:
        per_gen = float("nan")
    return (time.perf_counter() - t0) / max(done, 1), per_gen


def driver_overhead(n: int, candidates: int) -> float:
    """Seconds per evaluation of the whole minimize loop (EvoPress, cache, no journal) on a trivial oracle."""
    space = ls.LevelSpace(2, n_units=n, total=n // 4)
    w = np.random.default_rng(0).random(n)
    t0 = time.perf_counter()
    res = ls.minimize(lambda lv: float(w @ lv), space, max_evaluations=candidates, seed=0)
    return (time.perf_counter() - t0) / res.n_evaluations


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--optimizers",
        default="evopress-ref,evopress:surrogate=false,evopress",
        help="comma-separated registered names, each with optional options (name:key=value;key=value)",
    )
    ap.add_argument("--candidates", type=int, default=4000)
    ap.add_argument("--driver", action="store_true", help="also time the minimize() loop")
    args = ap.parse_args()
    sizes = (100, 1_000, 10_000)
    print(f"{'optimizer':28s}" + "".join(f"{'n=' + format(n, ','):>14s}" for n in sizes) + "   (ms per candidate)")
    for name in args.optimizers.split(","):
        res = [overhead(name, n, args.candidates) for n in sizes]
        print(f"{name:28s}" + "".join(f"{c * 1e3:14.4f}" for c, _ in res))
        if any(g == g for _, g in res):  # not all NaN
            print(f"{'  surrogate ms / generation':28s}" + "".join(f"{g * 1e3:14.2f}" for _, g in res))
    if args.driver:
        cells = [driver_overhead(n, args.candidates) * 1e3 for n in sizes]
        print(f"{'minimize(evopress) loop':28s}" + "".join(f"{c:14.4f}" for c in cells))


if __name__ == "__main__":
    main()
