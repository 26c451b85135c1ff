"""llama.cpp's own KL statistics of a finished ``--method gguf`` run's GGUF file beside ours, on the same tokens.

    .venv/bin/python bench/gguf_llama_check.py RUN_DIR [--gguf FILE] [--name NAME] [--threads 2]

Rebuilds the run's problem from its journal (as ``levelsearch export`` does: the same weights, data and settings as
the search), writes its held-out text and runs llama.cpp's ``llama-perplexity`` (``make llama-tools``) on the source
file (``--kl-divergence-base``: its log-probabilities and the tokens, in chunks of the run's sequence length) and on
the run's GGUF file (``--kl-divergence``; default ``RUN_DIR/model.gguf``, else what ``levelsearch export RUN_DIR``
wrote; a run without an export gets the file written by the export's writer, ``write_gguf``). Ours come from the
very tokens llama-perplexity saved (BOS first in each chunk where the file adds one, as llama.cpp does) at the
positions it scores (the second half of each chunk): the KL statistics by the search's own held-out code
(:meth:`~levelsearch.adapters.scoring.layerwise.LayerwiseProblem.chunk_statistics`: the source's top-``k`` tokens
plus one tail bin), perplexity by :func:`~levelsearch.adapters.codecs.gguf.llamacpp.perplexity_on_chunks`. Both
ways of :data:`WAYS`: as each tool computes by default, and like for like (llama.cpp without flash attention, ours
with llama.cpp's CPU rounding of activations). Writes ``bench/results/kl-check/<NAME>.json`` (with provenance);
exits 1 when, like for like, the mean KL or the top-1 agreement differ by more than :data:`TOL` (2%).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from levelsearch.adapters.cli.export import run_settings
from levelsearch.adapters.codecs import get_codec
from levelsearch.adapters.codecs.gguf import llamacpp as lc
from levelsearch.adapters.codecs.gguf.export import write_gguf
from provenance import provenance

ROOT = Path(__file__).resolve().parent.parent
#: our mean KL and top-1 agreement against llama-perplexity's, relative difference allowed
TOL = 0.02
STATS = ("kl_mean", "kl_median", "kl_p99", "kl_p99_9", "top1", "ppl")


def with_bos(problem: Any, tokens: np.ndarray) -> np.ndarray:
    """``tokens`` (``[n_chunk, n_ctx]``) with each chunk's first token the file's BOS where it adds one, as
    llama-perplexity runs them (its saved tokens are the text's, BOS only at the very start)."""
    fields = problem.source.reader.fields

    def get(key: str) -> Any:
        f = fields.get(key)
        return None if f is None else f.contents()

    out = np.array(tokens, dtype=np.int64)
    if get("tokenizer.ggml.add_bos_token") and get("tokenizer.ggml.bos_token_id") is not None:
        out[:, 0] = int(get("tokenizer.ggml.bos_token_id"))
    return out


#: the two ways the figures are set side by side: ``default`` as each tool computes them by default (llama.cpp's
#: flash attention, its 8-bit activations; our fp32), ``matched`` like for like (llama.cpp ``-fa off``: fp32
#: attention; ours with llama.cpp's CPU activation rounding, :mod:`~levelsearch.adapters.codecs.gguf.emulate`). The
#: check is on ``matched``.
WAYS = {"default": (None, False), "matched": ("off", True)}


def compare_one(
    problem: Any, levels: Any, gguf: Path, work: Path, threads: int, flash_attn: str | None, rounding: bool
) -> dict[str, Any]:
    """llama-perplexity's KL statistics of ``gguf`` against the problem's source file (``-fa flash_attn``) and ours
    of ``levels`` (with llama.cpp's CPU activation rounding when ``rounding``) on the same chunks of the problem's
    held-out text; the scratch files go to ``work`` (the saved log-probabilities are removed after)."""
    from levelsearch.adapters.codecs.gguf.emulate import llama_cpu_rounding

    tools = lc.find_tools()
    if tools is None:
        raise SystemExit(lc.missing_line())
    exe = tools["llama-perplexity"]
    work.mkdir(parents=True, exist_ok=True)
    text, base = work / "heldout.txt", work / "source.kld"
    text.write_text(lc.heldout_text(problem))
    n_ctx = int(problem.heldout.seq_len)
    t0 = time.perf_counter()
    try:
        source = lc.kl_base(exe, problem.source.path, text, base, n_ctx=n_ctx, threads=threads, flash_attn=flash_attn)
        tokens = lc.read_kl_base_tokens(base)
        theirs = lc.kl_divergence(exe, gguf, base, n_ctx=n_ctx, threads=threads, flash_attn=flash_attn)
    finally:
        base.unlink(missing_ok=True)
    llama_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    first = n_ctx // 2
    with llama_cpu_rounding(problem) if rounding else contextlib.nullcontext():
        stats = problem.chunk_statistics(levels, with_bos(problem, tokens), first)
        ours = {"kl_mean": stats.pop("kl"), **stats, "ppl": lc.perplexity_on_chunks(problem, levels, tokens)}
    ours_seconds = time.perf_counter() - t0
    gap = {k: ours[k] / theirs[k] - 1.0 if theirs[k] else float("nan") for k in STATS}
    return {
        "llama_flash_attn": flash_attn or "default",
        "ours_llama_cpu_rounding": rounding,
        "chunks": int(tokens.shape[0]),
        "scored_positions": int(ours["positions"]),
        "source_ppl": source["ppl"],
        "llama_perplexity": theirs,
        "ours": ours,
        "relative_gap": gap,
        "within_tol": {k: bool(abs(gap[k]) <= TOL) for k in ("kl_mean", "top1")},
        "seconds": {"llama_perplexity": llama_seconds, "ours": ours_seconds},
    }


def compare(problem: Any, levels: Any, gguf: Path, work: Path, threads: int) -> dict[str, Any]:
    """Both ways of :data:`WAYS` (:func:`compare_one`); ``within_tol`` is the ``matched`` way's."""
    ways = {name: compare_one(problem, levels, gguf, work, threads, fa, r) for name, (fa, r) in WAYS.items()}
    return {
        "file": gguf.name,
        "file_bytes": gguf.stat().st_size,
        "n_ctx": int(problem.heldout.seq_len),
        "chunks": ways["matched"]["chunks"],
        "scored_positions": ways["matched"]["scored_positions"],
        "top_k": int(problem.top_k),
        "ways": ways,
        "tol": TOL,
        "within_tol": ways["matched"]["within_tol"],
        "llama_cpp_python": lc.LLAMA_TOOLS_VERSION,
        "threads": threads,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--gguf", type=Path, default=None, help="the GGUF file (default: the run's export)")
    ap.add_argument("--name", default=None, help="results file name (default: the run directory's name)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--top-k", type=int, default=None, help="teacher tokens kept per position (default: the run's)")
    args = ap.parse_args()
    gguf = args.gguf or next(
        (p for p in (args.run / "model.gguf", args.run / "model-gguf" / "model.gguf") if p.is_file()), None
    )
    res, settings = run_settings(args.run)
    settings["threads"] = args.threads
    if args.top_k is not None:  # e.g. the whole vocabulary: our KL without the tail bin's lower bound
        settings["top_k"] = args.top_k
    problem = get_codec(str(res["method"])).make_problem(settings)
    levels = np.asarray(res["methods"]["evopress"]["levels"], dtype=np.int64)
    work = ROOT / "runs" / "kl-check"
    work.mkdir(parents=True, exist_ok=True)
    written = gguf is None
    if gguf is None:  # a run without its export: the file the export writes, by the export's own writer
        gguf = write_gguf(problem, levels, work / "model.gguf")
    record = compare(problem, levels, gguf, work, args.threads)
    ev = res["methods"]["evopress"]
    record = {
        "model": res["model"],
        "run": str(args.run),
        "target": res.get("target"),
        "bits_per_weight": ev.get("bits_per_weight"),
        **record,
        "file_written_by": "write_gguf (the run has no export)" if written else "the run's export",
        "ours_on_the_heldout_set": {k: ev.get(k) for k in ev if k.startswith("heldout_")},
        "provenance": provenance(),
    }
    dest = ROOT / "bench" / "results" / "kl-check" / f"{args.name or args.run.name}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(record, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    for name, way in record["ways"].items():
        g, ours, theirs = way["relative_gap"], way["ours"], way["llama_perplexity"]
        print(
            f"{dest} ({name}): mean KL ours {ours['kl_mean']:.5f} vs llama.cpp {theirs['kl_mean']:.5f} "
            f"({g['kl_mean']:+.2%}); top-1 {ours['top1']:.4f} vs {theirs['top1']:.4f} ({g['top1']:+.2%}); "
            f"{way['scored_positions']:,} positions"
        )
    return 0 if all(record["within_tol"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
