"""The stopping rule's effect at fixed work on synthetic problems (the smallest configuration that shows it;
the GGUF compress run is too long for a shared 2-core machine)::

    python bench/stopping_rule.py --out bench/results/stopping-rule

Two problems, each with the same budget with the rule off and on at two patiences (5 and 20 generations in a
row under 1e-3 relative gain), five seeds: ``interacting`` (64 units, exact values, 5,000 evaluations) and
``noisy`` over a linear problem (64 units, ``sigma`` 20, a 4,096-sample pool, the problem's schedule, 3e6 in
fidelity). Recorded per run: the work spent, the recommendation's true value, and why it stopped.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import levelsearch as ls

PROBLEMS: dict[str, tuple[dict[str, Any], dict[str, float]]] = {
    "interacting": (
        {"kind": "interacting", "n_units": 64, "n_levels": 2, "total": 16, "seed": 0, "coupling": 1.0},
        {"max_evaluations": 5000},
    ),
    "noisy": (
        {
            "kind": "noisy",
            "base": {"kind": "linear", "n_units": 64, "n_levels": 2, "total": 16, "seed": 0},
            "sigma": 20.0,
            "max_fidelity": 4096,
        },
        {"max_cost": 3_000_000},
    ),
}
PATIENCES = (5, 20)


def run(config: dict[str, Any], budget: dict[str, float], seed: int, options: dict[str, Any]) -> dict[str, Any]:
    res = ls.minimize(ls.make_problem(config), seed=seed, options=options or None, **budget)  # type: ignore[arg-type]
    return {
        "cost": res.cost,
        "evaluations": res.n_evaluations,
        "true_value": res.best_true_value,
        "stopped_by": res.stopped_by,
        "stop_reason": res.stop_reason,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    results: dict[str, Any] = {"min_improvement": 1e-3, "patiences": list(PATIENCES), "problems": {}}
    for name, (config, budget) in PROBLEMS.items():
        rows = []
        for seed in range(args.seeds):
            row: dict[str, Any] = {"seed": seed, "off": run(config, budget, seed, {})}
            for k in PATIENCES:
                row[f"patience {k}"] = run(config, budget, seed, {"patience": k, "min_improvement": 1e-3})
            rows.append(row)
            print(name, seed, {key: (round(v["cost"]), v["true_value"]) for key, v in row.items() if key != "seed"})
        results["problems"][name] = {
            "config": config,
            "budget": budget,
            "optimum": ls.make_problem(config).optimum,
            "runs": rows,
        }
    from provenance import provenance  # bench/ is this script's directory

    results["provenance"] = provenance()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
