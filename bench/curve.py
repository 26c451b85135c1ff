"""A size–quality curve of SmolLM2 from one compress run, and what it costs against a one-target run.

    python bench/curve.py --method quant --targets 2.5,3,3.5,4,4.5 --reference 3 --generations 4

runs ``levelsearch compress`` once with every target (one model load, teacher, database and set of
estimates; each target's search started from the best baseline or the previous target's result), then
once with the ``--reference`` target alone, both with the same generations per target (fixed work,
never wall time), and writes ``bench/results/curve-smollm2-<method>/curve.json`` (the run's curve, the
reference's forward tokens and the ratio, wall times beside them, provenance) and ``curve.png``.
The runs themselves go to ``--work`` (default ``runs/curve-<method>``), outside the repository's results.
"""

from __future__ import annotations

import argparse
import json
import shutil
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
    args = ap.parse_args()
    work = Path(args.work or f"runs/curve-{args.method}")
    targets = [float(t) for t in args.targets.split(",")]
    t0 = time.perf_counter()
    curve = run(settings(args.method, work / "curve", targets, args))
    curve_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    single = run(settings(args.method, work / f"single-{args.reference:g}", args.reference, args))
    single_seconds = time.perf_counter() - t0
    curve["reference"] = {
        "target": args.reference,
        "forward_tokens": int(single["forward_tokens"]),
        "heldout_kl": single["methods"]["evopress"]["heldout_kl"],
        "seconds": single_seconds,
    }
    curve["token_ratio"] = curve["forward_tokens"] / max(1, int(single["forward_tokens"]))
    curve["seconds"] = curve_seconds
    curve["settings"] = {k: v for k, v in vars(args).items() if k != "work"}
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
