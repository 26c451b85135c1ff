"""The stopping rule's effect at fixed work on synthetic problems, and on a GGUF compress run::

    python bench/stopping_rule.py --out bench/results/stopping-rule
    python bench/stopping_rule.py --gguf --work /tmp/stopping-gguf --out bench/results/stopping-gguf

``--gguf``: ``levelsearch compress --method gguf`` on SmolLM2 at llama.cpp's Q3_K_M size (4.634375 bits per
weight of the searched tensors, 2,048 calibration tokens, seed 0) twice, for ``--generations`` (default 30): with
``--patience 0`` (the rule off: every generation runs) and with compress's own rule (patience 20, 1e-3). Each
run's ``results.json`` summary (EvoPress and the dp-fisher start it begins from) goes to ``results.json``, the whole
file to ``OUT/rule-off/`` and ``OUT/rule-on/``; a run whose ``results.json`` is already under ``--work`` is read,
not run again.

Two problems, each with the same budget with the rule off and on at two patiences (5 and 20 generations in a
row under 1e-3 relative gain), five seeds: ``interacting`` (64 units, exact values, 5,000 evaluations) and
``noisy`` over a linear problem (64 units, ``sigma`` 20, a 4,096-sample pool, the problem's schedule, 3e6 in
fidelity). Recorded per run: the work spent, the recommendation's true value, and why it stopped.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
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


#: the GGUF run: SmolLM2 at llama.cpp's Q3_K_M size (bits per weight of the searched tensors)
GGUF_TARGET = 4.634375
GGUF_KEYS = ("calibration_kl", "heldout_ppl", "heldout_kl", "evaluations", "tokens", "generations", "stop_reason",
             "tokens_saved", "start", "seconds")  # fmt: skip


def gguf(work: Path, out: Path, generations: int, patience: int | None) -> None:
    """Two compress runs, the rule off and on (compress's patience, or ``patience``), and their summaries in
    ``out/results.json``."""
    results: dict[str, Any] = {"target_bits_per_weight": GGUF_TARGET, "generations": generations, "runs": {}}
    out.mkdir(parents=True, exist_ok=True)
    rule_on = (
        ("rule on (compress default)", [])
        if patience is None
        else (f"rule on (patience {patience})", ["--patience", str(patience)])
    )
    for name, extra in (("rule off", ["--patience", "0"]), rule_on):
        run_dir = work / name.split(" (")[0].replace(" ", "-")
        cmd = [
            "levelsearch", "compress", "--method", "gguf", "--model", "smollm2", "--target", str(GGUF_TARGET),
            "--calibration-tokens", "2048", "--seed", "0", "--generations", str(generations), "--threads", "1",
            "--no-export", "--quiet", "--out", str(run_dir), *extra,
        ]  # fmt: skip
        t0, ran = time.perf_counter(), False
        if not (run_dir / "results.json").is_file():
            subprocess.run([str(Path(sys.executable).parent / cmd[0]), *cmd[1:]], check=True)
            ran = True
        res = json.loads((run_dir / "results.json").read_text())
        (out / run_dir.name).mkdir(parents=True, exist_ok=True)  # the whole results.json too
        (out / run_dir.name / "results.json").write_text(json.dumps(res, indent=1) + "\n")
        evo, prior = res["methods"]["evopress"], res["methods"]["dp-fisher"]
        results["runs"][name] = {
            "command": " ".join(cmd),
            "evopress": {k: evo.get(k) for k in GGUF_KEYS},
            "dp-fisher": {k: prior.get(k) for k in ("calibration_kl", "heldout_ppl")},
            # a run read from --work, not run here: its search's seconds are in "evopress"
            "wall_seconds": time.perf_counter() - t0 if ran else None,
        }
        print(name, results["runs"][name]["evopress"])
    from provenance import provenance  # bench/ is this script's directory

    results["provenance"] = provenance()
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    # the runs' own results.json files carry none: this sidecar says where they came from
    (out / "provenance.json").write_text(json.dumps(results["provenance"], indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--gguf", action="store_true", help="the two GGUF compress runs instead (see above)")
    ap.add_argument("--work", default="/tmp/stopping-gguf", help="--gguf: where the runs go")
    ap.add_argument("--generations", type=int, default=30, help="--gguf: generations of each run")
    ap.add_argument("--patience", type=int, default=None, help="--gguf: the rule-on run's (default: compress's)")
    args = ap.parse_args()
    if args.gguf:
        gguf(Path(args.work), Path(args.out), args.generations, args.patience)
        return
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
