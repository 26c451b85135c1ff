"""Search efficiency on the real oracle: ``evopress-ref`` vs ``evopress``, calibration KL against forward tokens.

SmolLM2-135M (offline), the demo's data (calibration pool 4,096 tokens, held-out 4,096, 256-token
sequences, top-256 teacher), the ``cpu`` selection schedule of ``levelsearch compress``, and the
same start for both (the heuristic with the lowest calibration KL, as ``make demo``)::

    .venv/bin/python bench/search_efficiency.py --task drop --seeds 0 1 2
    .venv/bin/python bench/search_efficiency.py --task drop --seeds 0 --optimizers evopress-ref
    .venv/bin/python bench/search_efficiency.py --task sparsity --seeds 0   # 70% (SparseGPT levels)
    .venv/bin/python bench/search_efficiency.py --task quant --seeds 0      # 3 bits (GPTQ 2..6)

The start is the best baseline by calibration KL: the drop heuristics (angular, ShortGPT, single-KL)
or, for sparsity and quant, ``levelsearch compress``'s baselines (uniform, OWL, dp on the variant
database's per-unit errors). The variant database (built once, cached) is shared like the teacher:
its Hessians and the per-unit errors that ``evopress`` uses as prior cost no forward tokens here.

``evopress-ref`` runs ``--generations`` generations (default 45: the demo's); ``evopress`` then runs
until its best calibration KL is at most the reference's final one (same seed) or it has spent as
many forward tokens as the reference did. *Forward tokens* are the problem's own count
(``n_forward_tokens``: tokens that went through at least one decoder layer, per distinct candidate),
including what ``evopress`` spends on the problem's per-unit error estimates; the heuristics and the
dense teacher are computed once, shared, and counted for neither. Every run is journaled in
``OUT/<task>/<optimizer>-s<seed>.db`` and its trace in ``.json``: run the same command again to resume
(add ``--resume`` when the oracle's code changed since, giving the same values).

Prints one line per run (final KL, tokens, held-out perplexity) and the token ratio; writes
``OUT/<task>/<optimizer>-s<seed>.summary.json``; ``bench/efficiency_plot.py`` draws the curves.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from levelsearch.adapters.codecs.drop.heuristics import run_heuristics
from levelsearch.adapters.codecs.drop.problem import DropProblem
from levelsearch.adapters.run.schedules import schedule_options

from levelsearch import Request, make_optimizer, minimize

DATA = {"calibration_tokens": 4096, "heldout_tokens": 4096, "seq_len": 256, "top_k": 256, "seed": 0}


def _problem(args: argparse.Namespace) -> Any:
    """The task's problem on the demo's data: drop 25% of sub-blocks, 70% sparsity (SparseGPT), 3 bits (GPTQ)."""
    if args.task == "drop":
        return DropProblem("smollm2", target=0.25, **DATA)
    if args.task == "sparsity":
        from levelsearch.adapters.codecs.sparsity.problem import SparsityProblem

        return SparsityProblem("smollm2", target=0.7, **DATA)
    if args.task == "quant":
        from levelsearch.adapters.codecs.quant.problem import QuantProblem

        return QuantProblem("smollm2", target=3.0, **DATA)
    raise SystemExit(f"task {args.task!r}: choose drop, sparsity or quant")


def _baselines(problem: Any) -> dict[str, Any]:
    """The task's heuristics (drop) or baselines (uniform, the codec's own, dp) with full-pool calibration KL."""
    if isinstance(problem, DropProblem):
        heur = run_heuristics(problem, None, n_tokens=2048, seed=0)
        vals = problem.evaluate_many([Request(h["levels"], None, 0) for h in heur.values()])
        for name, v in zip(list(heur), vals):
            heur[name]["calibration_kl"] = float(v)
        return heur
    from levelsearch.adapters.codecs import get_codec

    base = get_codec(problem.spec["kind"]).run_baselines(problem, {"seed": 0, "heuristic_tokens": 2048}, None, {})
    return {k: {"levels": np.asarray(v["levels"]), "calibration_kl": v["calibration_kl"]} for k, v in base.items()}


def _heuristics(problem: Any, out: Path) -> dict[str, Any]:
    path = out / "heuristics.json"
    if path.exists():
        return {
            k: {**v, "levels": np.asarray(v["levels"], dtype=np.int64)} for k, v in json.loads(path.read_text()).items()
        }
    heur = _baselines(problem)
    path.write_text(json.dumps({k: {**v, "levels": np.asarray(v["levels"]).tolist()} for k, v in heur.items()}))
    return heur


def _reset(problem: Any, heur: dict[str, Any]) -> None:
    """Forget everything a previous run left in the oracle; remember the heuristics' full-pool values."""
    problem._memo.clear()
    problem._seq_kl.clear()
    problem._unit_errors = None  # dropping measures them again (their tokens counted); weight codecs read the database
    problem.store = type(problem.store)(problem.store.max_variants)  # every codec's problem keeps anchor states
    for h in heur.values():
        problem._memo[np.asarray(h["levels"], dtype=np.int64).tobytes()] = float(h["calibration_kl"])


def _run(
    problem: Any,
    heur: dict[str, Any],
    name: str,
    seed: int,
    out: Path,
    generations: int,
    target: float | None,
    max_tokens: float | None,
    extra: dict[str, Any] | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    _reset(problem, heur)
    best = min(heur, key=lambda n: heur[n]["calibration_kl"])
    pool = getattr(problem, "search_pool", problem.calibration)
    options = schedule_options("cpu", pool.n_tokens, None, pool.seq_len, name)
    options["start"] = heur[best]["levels"]
    if name != "evopress-ref":
        options.update(extra or {})
    opt = make_optimizer(name, problem.space, seed=seed, max_generations=generations, **options)
    trace_file = out / f"{name}-s{seed}.json"
    old = json.loads(trace_file.read_text())["trace"] if trace_file.exists() else []
    trace: list[dict[str, float]] = []
    t0 = time.perf_counter()
    base = problem.n_forward_tokens

    class Stop(Exception):
        pass

    def hook(n_eval: int, cost: float, value: float) -> None:
        k = len(trace)
        tokens = (
            old[k]["tokens"]
            if k < len(old)
            else (trace[-1]["tokens"] if trace else 0.0)
            + (
                problem.n_forward_tokens - hook.last  # type: ignore[attr-defined]
            )
        )
        hook.last = problem.n_forward_tokens  # type: ignore[attr-defined]
        trace.append(
            {"batch": k, "generation": int(opt.generation), "evaluations": n_eval, "tokens": float(tokens), "kl": value}
        )
        if k % 5 == 0:
            trace_file.write_text(json.dumps({"trace": trace}))
        if max_tokens is not None and tokens >= max_tokens:
            raise Stop

    hook.last = base  # type: ignore[attr-defined]
    try:
        res = minimize(
            problem, optimizer=opt, journal=out / f"{name}-s{seed}.db", progress=hook, target=target, resume=resume
        )
        levels, kl, stopped = res.best_levels, res.best_value, res.stopped_by
    except Stop:
        levels, kl = opt.recommend()
        stopped = "max_tokens"
    wall = time.perf_counter() - t0
    trace_file.write_text(json.dumps({"trace": trace}))
    held = problem.heldout_report([np.asarray(levels)])[0]
    return {
        "optimizer": name,
        "seed": seed,
        "start": best,
        "start_kl": heur[best]["calibration_kl"],
        "generations": int(opt.generation),
        "tokens": trace[-1]["tokens"] if trace else 0.0,
        "calibration_kl": float(kl),
        "heldout_ppl": held["heldout_ppl"],
        "stopped_by": stopped,
        "wall_seconds": wall,
        "surrogate_seconds": float(getattr(opt, "surrogate_seconds", 0.0)),
        "levels": np.asarray(levels).tolist(),
        "trace": trace,
    }


def _tokens_to_reach(trace: list[dict[str, float]], kl: float) -> float:
    for p in trace:
        if p["kl"] <= kl + 1e-12:
            return p["tokens"]
    return math.inf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="drop")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--optimizers", nargs="+", default=["evopress-ref", "evopress"])
    ap.add_argument("--generations", type=int, default=45, help="evopress-ref's generations (the demo's 45)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--max-tokens", type=float, default=None, help="the new optimizer's token cap (default: the reference's)"
    )
    ap.add_argument("--ref-dir", default=None, help="where evopress-ref's results are (default: --out)")
    ap.add_argument("--options", default="{}", help="extra options of the new optimizer, as YAML (an ablation)")
    ap.add_argument("--out", default="bench/results/efficiency")
    ap.add_argument(
        "--resume",
        action="store_true",
        help="replay journals written by an earlier version of the oracle's code (same values: see the golden tests)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out) / args.task
    out.mkdir(parents=True, exist_ok=True)
    ref_dir = Path(args.ref_dir) / args.task if args.ref_dir else out
    t0 = time.perf_counter()
    problem = _problem(args)
    heur = _heuristics(problem, out)
    print(f"setup (model, teacher, heuristics) {time.perf_counter() - t0:.0f} s", flush=True)

    def saved(key: str) -> dict[str, Any] | None:
        f = ref_dir / f"{key}.summary.json"
        return json.loads(f.read_text()) if f.exists() else None

    for seed in args.seeds:
        ref = saved(f"evopress-ref-s{seed}")
        for name in args.optimizers:
            if name == "evopress-ref":
                r = _run(problem, heur, name, seed, out, args.generations, None, None, resume=args.resume)
            else:
                target = None if ref is None else ref["calibration_kl"]
                cap = args.max_tokens if args.max_tokens is not None or ref is None else ref["tokens"]
                extra = yaml.safe_load(args.options) or {}
                r = _run(problem, heur, name, seed, out, 10 * args.generations, target, cap, extra, args.resume)
            row = {k: v for k, v in r.items() if k != "trace"}
            (out / f"{name}-s{seed}.summary.json").write_text(json.dumps(row, indent=1))
            if name == "evopress-ref":
                ref = row
            line = (
                f"{args.task} seed {seed} {name:13s} KL {r['calibration_kl']:.4f} "
                f"after {r['generations']} generations, "
                f"{r['tokens']:.0f} forward tokens, held-out ppl {r['heldout_ppl']:.2f}, {r['wall_seconds']:.0f} s "
                f"({r['tokens'] / max(r['wall_seconds'], 1e-9):.0f} tokens/s), stopped by {r['stopped_by']}"
            )
            if name != "evopress-ref" and ref is not None:
                need = _tokens_to_reach(r["trace"], ref["calibration_kl"])
                ratio = need / ref["tokens"]
                line += f"; reached the reference's {ref['calibration_kl']:.4f} after {need:.0f} tokens = {ratio:.2f}x"
            print(line, flush=True)


if __name__ == "__main__":
    main()
