"""``levelsearch run`` with ``optimizer: {name: evopress}`` and nothing else, against ``compress`` and against
``evopress-ref`` with the CPU schedule, on SmolLM2-135M dropping 25% of its sub-blocks (4,096 calibration
tokens, seed 0). Bounded by work (forward tokens), wall time reported beside it::

    python bench/search_defaults.py --work /tmp/sd --out bench/results/search-defaults

Runs (each resumes from its journal under ``--work`` when run again):

- ``run-evopress``: ``levelsearch run`` with ``max_cost`` 120,000 tokens and no optimizer options (the
  problem's schedule and start);
- ``run-evopress-ref-cpu``: ``levelsearch run`` with ``evopress-ref`` given the CPU schedule
  (``steps: [[256, 3], [1024, 1], [4096, 1]]``, 16 offspring), ``max_cost`` 240,000;
- ``compress``: ``levelsearch compress --method drop --target 0.25`` for ``--compress-generations``
  generations, its journal read for the best calibration KL after each token count.

``results.json`` holds, for each, the best calibration KL against the forward tokens its search spent.
``--collect --only NAME`` reads a run's journal as it stands (an unfinished run says so: ``finished`` false;
compress's needs its ``results.json``). ``compress`` also records its best calibration KL after at most the tokens
``run-evopress`` spent, and how many leading journal records (requests and values) the two runs share.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

PROBLEM = {
    "kind": "llm-drop",
    "model": "smollm2",
    "target": 0.25,
    "calibration_tokens": 4096,
    "threads": 1,
}
CPU_STEPS = [[256, 3], [1024, 1], [4096, 1]]


def _levelsearch(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "levelsearch"), *args]


def _run_config(
    work: Path, name: str, optimizer: dict[str, Any], max_cost: int, collect: bool = False
) -> dict[str, Any]:
    cfg = {"problem": PROBLEM, "optimizer": optimizer, "seed": 0, "budget": {"max_cost": max_cost}}
    out = work / name
    t0 = time.perf_counter()
    if not collect:
        path = work / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        subprocess.run(_levelsearch("run", str(path), "--out", str(out)), check=True)
    done = (out / "summary.json").is_file()
    summary = json.loads((out / "summary.json").read_text()) if done else {}
    curve = _curve(out / "journal.db")
    return {
        "config": cfg,
        # a run stopped before its budget (--collect of an unfinished journal) says how far it got
        "finished": done,
        "summary": {k: summary.get(k) for k in ("best_value", "n_evaluations", "cost", "stopped_by", "defaults")},
        "tokens_spent": _spent(out / "journal.db"),
        "curve": curve,
        "wall_seconds": None if collect else time.perf_counter() - t0,
    }


def _spent(journal: Path) -> float:
    from levelsearch.journal import Journal

    records = Journal(journal, readonly=True).records()
    return float(sum(float(r.fidelity or PROBLEM["calibration_tokens"]) for r in records))


def _curve(journal: Path) -> list[tuple[float, float]]:
    """(tokens spent, best value measured on the whole pool so far) after each whole-pool evaluation."""
    from levelsearch.journal import Journal

    jr = Journal(journal, readonly=True)
    spent, best, out = 0.0, float("inf"), []
    for r in jr.records():
        spent += float(r.fidelity or PROBLEM["calibration_tokens"])
        if r.ok and (r.fidelity is None or r.fidelity >= PROBLEM["calibration_tokens"]):
            best = min(best, float(r.value))
            out.append((spent, best))
    return out


def _compress(work: Path, generations: int, collect: bool = False) -> dict[str, Any]:
    out = work / "compress"
    cmd = _levelsearch(
        "compress", "--method", "drop", "--model", "smollm2", "--target", "0.25", "--calibration-tokens", "4096",
        "--seed", "0", "--generations", str(generations), "--threads", "1", "--no-export", "--quiet", "--out", str(out),
    )  # fmt: skip
    t0 = time.perf_counter()
    if not collect:
        subprocess.run(cmd, check=True)
    res = json.loads((out / "results.json").read_text())
    evo = res["methods"]["evopress"]
    curve = _curve(out / "journal.db")
    run_journal = work / "run-evopress" / "journal.db"
    same = _same_records(run_journal, out / "journal.db") if run_journal.is_file() else None
    run_tokens = _spent(run_journal) if run_journal.is_file() else None
    return {
        "command": " ".join(["levelsearch", *cmd[1:]]),
        "start": evo.get("start"),
        "start_kl": res["methods"][str(evo.get("start", "")).split(":")[-1]]["calibration_kl"]
        if str(evo.get("start", "")).split(":")[-1] in res["methods"]
        else None,
        "summary": {k: evo.get(k) for k in ("calibration_kl", "evaluations", "tokens", "generations", "stop_reason")},
        "curve": curve,
        # the run door's tokens, and compress's best after at most as many
        "run_evopress_tokens": run_tokens,
        "best_at_run_evopress_tokens": min((v for t, v in curve if run_tokens and t <= run_tokens), default=None),
        # leading journal records (fidelity, data sample, assignment, value) that equal run-evopress's
        "records_equal_to_run_evopress": same,
        "wall_seconds": None if collect else time.perf_counter() - t0,
    }


def _same_records(a: Path, b: Path) -> dict[str, int]:
    from levelsearch.journal import Journal

    ra, rb = list(Journal(a, readonly=True).records()), list(Journal(b, readonly=True).records())
    same = 0
    for x, y in zip(ra, rb):
        if (x.fidelity, x.sample, x.levels.tolist(), x.value) != (y.fidelity, y.sample, y.levels.tolist(), y.value):
            break
        same += 1
    return {"equal_leading_records": same, "run_evopress_records": len(ra), "compress_records": len(rb)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True, help="directory for the runs (journals, summaries)")
    ap.add_argument("--out", required=True, help="directory of results.json")
    ap.add_argument("--only", default="run-evopress,compress,run-evopress-ref-cpu")
    ap.add_argument("--compress-generations", type=int, default=8)
    ap.add_argument("--collect", action="store_true", help="read the runs' journals as they stand; run nothing")
    args = ap.parse_args()
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    for name in args.only.split(","):
        if name == "run-evopress":
            results[name] = _run_config(work, name, {"name": "evopress"}, 120_000, args.collect)
        elif name == "run-evopress-ref-cpu":
            opt = {"name": "evopress-ref", "steps": CPU_STEPS, "offspring": 16}
            results[name] = _run_config(work, name, opt, 240_000, args.collect)
        elif name == "compress":
            results[name] = _compress(work, args.compress_generations, args.collect)
        else:
            raise SystemExit(f"unknown run {name!r}")
        from provenance import provenance  # bench/ is this script's directory

        results["provenance"] = provenance()
        path.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
