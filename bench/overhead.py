"""Optimizer overhead per candidate (ask + tell, no fitness cost) at n = 100, 1,000 and 10,000 units.

Usage: python bench/overhead.py [--optimizers evopress,random,...] [--candidates 4000] [--out DIR]

With ``--out`` the numbers go to ``DIR/overhead.json`` (with their provenance), ``bench/tables_search.py``'s
``overhead`` table reads them. The work is fixed (``--candidates`` per optimizer and size); wall time is what
is measured, so run it on an otherwise idle machine and compare only numbers of the same run (the ratio to
``evopress-ref`` is printed and recorded for that reason).

An optimizer may carry options after a colon: ``evopress:surrogate=false`` (values read as YAML).
For ``evopress`` the surrogate's own seconds per generation are printed too.

The fitness is a precomputed random vector lookup, so what is timed is the
optimizer's own work: mutation, duplicate checks, repair and selection. The
driver's cache/journal are not involved (see ``--driver`` to include the
in-memory driver loop as well).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

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


def _package_commit() -> str | None:
    """The commit of the checkout the imported ``levelsearch`` comes from (a worktree of an older commit
    measures the code before a change)."""
    import subprocess

    where = Path(ls.__file__).resolve().parent
    try:
        return subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--optimizers",
        default="evopress-ref,evopress:surrogate=false,evopress",
        help="comma-separated registered names, each with optional options (name:key=value;key=value)",
    )
    ap.add_argument("--candidates", type=int, default=4000)
    ap.add_argument("--sizes", default="100,1000,10000", help="comma-separated unit counts")
    ap.add_argument("--driver", action="store_true", help="also time the minimize() loop")
    ap.add_argument("--out", default=None, help="write DIR/overhead.json")
    args = ap.parse_args()
    sizes = tuple(int(x) for x in args.sizes.split(","))
    rows: dict[str, dict[str, object]] = {}
    print(f"{'optimizer':28s}" + "".join(f"{'n=' + format(n, ','):>14s}" for n in sizes) + "   (ms per candidate)")
    for name in args.optimizers.split(","):
        res = [overhead(name, n, args.candidates) for n in sizes]
        rows[name] = {
            "ms_per_candidate": {str(n): c * 1e3 for n, (c, _) in zip(sizes, res)},
            "surrogate_ms_per_generation": {str(n): (g * 1e3 if g == g else None) for n, (_, g) in zip(sizes, res)},
        }
        print(f"{name:28s}" + "".join(f"{c * 1e3:14.4f}" for c, _ in res))
        if any(g == g for _, g in res):  # not all NaN
            print(f"{'  surrogate ms / generation':28s}" + "".join(f"{g * 1e3:14.2f}" for _, g in res))
    ref = rows.get("evopress-ref")
    if ref is not None:
        for row in rows.values():
            mine, base = row["ms_per_candidate"], ref["ms_per_candidate"]
            assert isinstance(mine, dict) and isinstance(base, dict)
            row["ratio_to_evopress_ref"] = {n: mine[n] / base[n] for n in mine}
    if args.driver:
        cells = [driver_overhead(n, args.candidates) * 1e3 for n in sizes]
        print(f"{'minimize(evopress) loop':28s}" + "".join(f"{c:14.4f}" for c in cells))
    if args.out:
        from provenance import provenance  # bench/ is this script's directory

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        results = {
            "candidates": args.candidates,
            "sizes": list(sizes),
            "space": "n units, 2 levels, a quarter of them at level 1 (LevelSpace(2, n_units=n, total=n // 4))",
            "fitness": "a random number per candidate: the optimizer's own work is what is timed",
            "cpus": os.cpu_count(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "levelsearch_commit": _package_commit(),
            "optimizers": rows,
            "provenance": provenance(),
        }
        (out / "overhead.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
