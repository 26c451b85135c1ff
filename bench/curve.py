"""A size–quality curve of SmolLM2 from one compress run, and what it costs against a one-target run.

    python bench/curve.py --method quant --targets 2.5,3,3.5,4,4.5 --reference 3 --generations 4

runs ``levelsearch compress`` once with every target (one model load, teacher, database and set of
estimates; each target's search started from the best baseline or the previous target's result), then
once with the ``--reference`` target alone, both with the same generations per target (fixed work,
never wall time), and writes ``bench/results/curve-smollm2-<method>/curve.json`` (the run's curve, the
reference's forward tokens and the ratio, wall times beside them, provenance) and ``curve.png``.
The runs themselves go to ``--work`` (default ``runs/curve-<method>``), outside the repository's results.
``--parallel`` runs the reference target in a second process meanwhile (the forward tokens are the same; the wall
times then share the machine); ``--no-llama-tools`` leaves llama-quantize's own files out of a gguf run's baselines.

    python bench/curve.py --method gguf --targets 4.634375,5,5.534375,5.8,6.035 --reference 5.534375 \
        --generations 3 --heldout-tokens 1024 --parallel --no-llama-tools
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from provenance import provenance

ROOT = Path(__file__).resolve().parent.parent


def settings(method: str, out: Path, target: Any, args: argparse.Namespace) -> dict[str, Any]:
    try:
        from levelsearch.adapters.run.settings import CompressSettings
    except ImportError:  # the settings' older home
        from levelsearch.adapters.cli.settings import CompressSettings  # type: ignore[no-redef]

    cfg = CompressSettings(
        model=args.model,
        method=method,
        out=str(out),
        generations=args.generations,
        calibration_tokens=args.calibration_tokens,
        heldout_tokens=args.heldout_tokens,
        threads=args.threads,
        export=False,
        progress=False,
    ).to_dict()
    cfg["target"] = target
    if args.patience is not None:
        cfg["patience"] = args.patience
    if args.accept_p is not None:
        cfg["accept_p"] = args.accept_p
    return cfg


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    from levelsearch.adapters.codecs import get_codec
    from levelsearch.adapters.run.curve import run_any as run_pipeline

    try:
        return run_pipeline(get_codec(cfg["method"]), cfg)
    finally:
        lock = cfg.pop("_lock", None)
        if lock is not None:
            lock.close()


def notes(curve: dict[str, Any], single: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """What the measured numbers say: the token ratio against the 2x bound and where the tokens went, and
    the targets where EvoPress's held-out KL is above the best baseline's."""

    ratio, k = curve["token_ratio"], len(curve["points"])
    total = int(single["forward_tokens"])
    search = float(single["methods"]["evopress"].get("tokens", 0.0))
    per = [p["forward_tokens"] for p in curve["points"]]
    out = [
        f"The {k}-target run cost {curve['forward_tokens']:,} forward tokens, {ratio:.2f}x the {total:,} of the "
        f"target-{args.reference:g} run alone, both with {args.generations} generations per target "
        f"(the bound asked: 2x). Both count the teachers' passes, the estimates, the baselines, the searches and "
        "the held-out reports; the variant database came from the cache in both (its build is counted in neither)."
    ]
    if getattr(args, "no_llama_tools", False) and args.method == "gguf":
        out.append(
            "llama-quantize's own files were left out as baselines here (--no-llama-tools: their llama-imatrix pass "
            "and three quantizations per target, on a shared 2-core machine); our reproduction of its Q3_K_M and "
            "Q4_K_M rules is among the baselines."
        )
    if ratio > 2.0:
        out.append(
            f"2x does not hold at equal generations per target: each target runs its own search, and the "
            f"one-target run's search asked for {search:,.0f} of its {total:,} tokens ({search / total:.0%}); "
            f"{k} searches of that size alone are {k * search / total:.2f}x. What the targets share is paid once "
            f"(the teacher: {curve['shared_forward_tokens']:,} tokens; the estimates; a candidate met again, such "
            "as a baseline of the same levels, by its remembered KL and held-out report); per target the run "
            f"spent {', '.join(f'{t:,}' for t in per)} tokens."
        )
        from levelsearch.adapters.run.pipeline import COMPRESS_PATIENCE

        patience = COMPRESS_PATIENCE if args.patience is None else args.patience
        if patience >= args.generations:
            out.append(
                f"The stopping rule (patience {patience} generations) cannot end a search of {args.generations} "
                "generations early, so a target whose start is already near-optimal still runs them all."
            )
    bad = [p["name"] for p in curve["points"] if p.get("evopress_at_most_best_baseline") is False]
    if bad:
        out.append(
            "EvoPress's held-out KL is above the best baseline's at "
            + ", ".join(
                f"{p['name']} ({p['methods']['evopress']['heldout_kl']:.4f} vs {p['best_baseline']} "
                f"{p['best_baseline_kl']:.4f})"
                for p in curve["points"]
                if p["name"] in bad
            )
            + ": the search picks on calibration KL, and there it is at most its start's."
        )
    else:
        out.append("At every target EvoPress's held-out KL is at most the best baseline's.")
    return out


def single_run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The ``--reference`` target alone: its results and wall time (also kept in ``WORK/single.json``)."""
    t0 = time.perf_counter()
    res = run(settings(args.method, work / f"single-{args.reference:g}", args.reference, args))
    out = {"results": res, "seconds": time.perf_counter() - t0}
    (work / "single.json").write_text(json.dumps(out, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--method", default="quant")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--targets", default="2.5,3,3.5,4,4.5")
    ap.add_argument("--reference", type=float, default=3.0)
    ap.add_argument("--generations", type=int, default=4)
    ap.add_argument("--calibration-tokens", type=int, default=2048)
    ap.add_argument("--heldout-tokens", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default=None)
    ap.add_argument("--patience", type=int, default=None, help="compress's stopping rule (default: its own)")
    ap.add_argument(
        "--accept-p", type=float, default=None, help="compress's --accept-p: a result kept over its start beyond chance"
    )
    ap.add_argument(
        "--parallel", action="store_true", help="run the reference target alone in a second process meanwhile"
    )
    ap.add_argument(
        "--no-llama-tools",
        action="store_true",
        help="gguf: leave out llama-quantize's own files as baselines (our reproduction of its mix rules stays)",
    )
    ap.add_argument("--part", choices=("all", "single"), default="all", help=argparse.SUPPRESS)
    args = ap.parse_args()
    work = Path(args.work or f"runs/curve-{args.method}")
    work.mkdir(parents=True, exist_ok=True)
    if args.no_llama_tools:
        from levelsearch.adapters.codecs.gguf import codec as gguf_codec

        gguf_codec.find_tools = lambda *a, **k: None  # type: ignore[assignment]
        gguf_codec.missing_line = lambda: "llama-quantize's own files are left out (--no-llama-tools)"  # type: ignore[assignment]
    if args.part == "single":
        single_run(args, work)
        return
    targets = [float(t) for t in args.targets.split(",")]
    child = None
    if args.parallel:
        child = subprocess.Popen([sys.executable, __file__, *sys.argv[1:], "--part", "single"])
    resumed = (work / "curve").is_dir()  # a run stopped before: the same command goes on from its journals
    t0 = time.perf_counter()
    curve = run(settings(args.method, work / "curve", targets, args))
    curve_seconds = time.perf_counter() - t0
    if child is not None:
        if child.wait() != 0:
            raise SystemExit(f"the reference run failed (exit {child.returncode})")
        done = json.loads((work / "single.json").read_text())
    elif (work / "single.json").is_file():  # the reference finished in an earlier, stopped, invocation
        done = json.loads((work / "single.json").read_text())
    else:
        done = single_run(args, work)
    single, single_seconds = done["results"], float(done["seconds"])
    curve["reference"] = {
        "target": args.reference,
        "forward_tokens": int(single["forward_tokens"]),
        "heldout_kl": single["methods"]["evopress"]["heldout_kl"],
        "seconds": single_seconds,
    }
    curve["token_ratio"] = curve["forward_tokens"] / max(1, int(single["forward_tokens"]))
    curve["seconds"] = curve_seconds
    if resumed:
        curve["seconds_note"] = "the curve run was stopped and resumed: seconds is the wall time of its last part only"
    curve["notes"] = notes(curve, single, args)
    curve["settings"] = {k: v for k, v in vars(args).items() if k not in ("work", "part")}
    curve["provenance"] = provenance()
    dest = ROOT / "bench" / "results" / f"curve-smollm2-{args.method}"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "curve.json").write_text(json.dumps(curve, indent=1))
    shutil.copyfile(work / "curve" / "curve.png", dest / "curve.png")
    print(
        f"{dest}: forward tokens {curve['forward_tokens']:,} vs {single['forward_tokens']:,} for target "
        f"{args.reference:g} alone ({curve['token_ratio']:.2f}x)"
    )


if __name__ == "__main__":
    main()
