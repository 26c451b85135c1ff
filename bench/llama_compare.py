"""GGUF files side by side under llama.cpp's own yardstick: ``llama-perplexity --kl-divergence`` against the source.

    .venv/bin/python bench/llama_compare.py [--model smollm2|gemma3] [--threads 2] [--chunks N]

Per model and per size (the sizes of llama.cpp's Q3_K_M and Q4_K_M mixes on that model's searched tensors), from
a committed ``--method gguf`` run at that size (fixed work: its generations, calibration and held-out tokens):

- ``source``: the model's GGUF file as shipped (the reference: KL 0);
- ``llama-quantize MIX``: llama.cpp's stock mix written by the built ``llama-quantize`` (``make llama-tools``);
- llama.cpp's automatic allocator to a size target: not in the pinned llama.cpp (no ``--target-bpw``);
- ``dp-fisher`` and ``EvoPress``: the types the run chose, written by the same ``llama-quantize`` from the
  run's overrides (``levelsearch gguf-recipe``'s ``--tensor-type-file`` route; the written types are checked
  against the run's).

Every file is quantized by llama-quantize from the same source with the same importance matrix, made by
``llama-imatrix`` on the run's calibration text (``--allow-requantize``: the source is already quantized), and
every tensor the run does not search is pinned to its source type: the files differ only in the types of the
searched tensors. Each is measured by ``llama-perplexity --kl-divergence`` on the run's held-out text in chunks of
its sequence length (llama.cpp scores the second half of each chunk); ``--chunks N`` keeps the text of the first
``N`` held-out sequences only (default :data:`CHUNKS`: Gemma 3's 262,144-token vocabulary makes the source's saved
log-probabilities about 67 MB per chunk, removed after the run). Writes
``bench/results/llamacpp/<model>.json`` (with provenance); the scratch files go to ``runs/llama-compare/``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from levelsearch.adapters.codecs.gguf import llamacpp as lc
from levelsearch.adapters.codecs.gguf.export import recipe_overrides
from levelsearch.adapters.codecs.gguf.source import resolve_source
from levelsearch.adapters.model.data import calibration_and_heldout
from levelsearch.adapters.model.models import load_model
from provenance import provenance

ROOT = Path(__file__).resolve().parent
#: model → the committed runs at the Q3_K_M and Q4_K_M sizes (directories under bench/results/)
RUNS: dict[str, dict[str, str]] = {
    "smollm2": {"Q3_K_M": "gguf-smollm2/fisher-t4.634375", "Q4_K_M": "gguf-smollm2/fisher-t5.534375"},
    "gemma3": {"Q3_K_M": "gguf-gemma3/t4.544117647058823", "Q4_K_M": "gguf-gemma3/t5.4338235294117645"},
}
#: model → held-out sequences whose text llama-perplexity reads (absent: all of the run's held-out tokens)
CHUNKS: dict[str, int] = {"gemma3": 8}
METHODS = ("dp-fisher", "evopress")


def _texts(res: dict[str, Any], work: Path, chunks: int | None = None) -> tuple[Path, Path]:
    """The run's calibration and held-out token sets as text (what llama-imatrix and llama-perplexity read), the
    held-out text cut to its first ``chunks`` sequences when given."""
    _, tok = load_model(res["model"])
    cal, held = calibration_and_heldout(
        tok,
        None,
        seq_len=256,
        calibration_tokens=int(res["calibration_tokens"]),
        heldout_tokens=int(res["heldout_tokens"]),
        seed=0,
    )
    paths = []
    for name, tokens in (("calibration", cal.tokens), ("heldout", held.tokens[:chunks])):
        p = work / f"{name}.txt"
        p.write_text(tok.decode(tokens.reshape(-1).tolist(), skip_special_tokens=True))
        paths.append(p)
    return paths[0], paths[1]


def _pins(res: dict[str, Any]) -> list[str]:
    import re

    return [f"^{re.escape(n)}$={str(t).lower()}" for n, t in sorted((res.get("kept_tensors") or {}).items())]


def _searched_bits(res: dict[str, Any], path: Path) -> float:
    """Bits per weight of the run's searched tensors in the GGUF file ``path``: ``8 · bytes / weights``."""
    from gguf import GGUFReader

    searched = set(res["gguf_tensors"])
    ts = [t for t in GGUFReader(str(path)).tensors if t.name in searched]
    return 8.0 * sum(int(t.n_bytes) for t in ts) / sum(int(t.n_elements) for t in ts)


def one_size(res: dict[str, Any], mix: str, work: Path, tools: dict[str, Path], imatrix: Path, base: Path,
             threads: int) -> dict[str, Any]:
    """The rows of one size: llama-quantize's ``mix``, then each method of :data:`METHODS` by its recipe."""
    src = Path(res["source"]["file"]) if res.get("source") else resolve_source(res["model"])
    rows: dict[str, Any] = {}
    files: dict[str, Path] = {}
    t0 = time.perf_counter()
    stock = work / f"llama-quantize-{mix}.gguf"
    lc.quantize(tools["llama-quantize"], src, stock, mix, imatrix=imatrix, tensor_types=_pins(res), threads=threads)
    files[f"llama-quantize {mix}"] = stock
    rows[f"llama-quantize {mix}"] = {"quantize_seconds": time.perf_counter() - t0}
    for method in METHODS:
        if method not in res["methods"]:
            continue
        t0 = time.perf_counter()
        tt = work / f"{method}-{mix}.txt"
        tt.write_text("\n".join(recipe_overrides(res, method)) + "\n")
        path = work / f"{method}-{mix}.gguf"
        lc.quantize(tools["llama-quantize"], src, path, mix, imatrix=imatrix, tensor_type_file=tt, threads=threads)
        got = lc.gguf_tensor_types(path)
        want = dict(zip(res["gguf_tensors"], res["methods"][method]["types"]))
        rows[method] = {
            "quantize_seconds": time.perf_counter() - t0,
            "types_as_the_run_chose": all(got[g] == t for g, t in want.items()),
            "ours": {k: res["methods"][method].get(k) for k in ("heldout_kl", "heldout_kl_p99", "heldout_top1",
                                                                  "heldout_ppl", "bits_per_weight")},
        }
        files[method] = path
    for name, path in files.items():
        t0 = time.perf_counter()
        try:
            stats: dict[str, Any] = lc.kl_divergence(tools["llama-perplexity"], path, base, n_ctx=256, threads=threads)
        except lc.LlamaToolError as exc:
            stats = {"failed": str(exc)}
        rows[name].update(stats)
        rows[name]["kl_seconds"] = time.perf_counter() - t0
        rows[name]["file_bytes"] = path.stat().st_size
        rows[name]["bits_per_weight"] = _searched_bits(res, path)
        print(f"  {mix} {name}: {rows[name].get('kl_mean')} KL, {rows[name]['file_bytes']:,} bytes", flush=True)
    rows["llama.cpp allocator"] = {"not_run": lc.ALLOCATOR}
    return rows


def compare_model(model: str, threads: int, chunks: int | None = None) -> dict[str, Any]:
    tools = lc.find_tools()
    if tools is None:
        raise SystemExit(lc.missing_line())
    work = ROOT.parent / "runs" / "llama-compare" / model
    work.mkdir(parents=True, exist_ok=True)
    runs = {mix: json.loads((ROOT / "results" / d / "results.json").read_text()) for mix, d in RUNS[model].items()}
    first = next(iter(runs.values()))
    src = resolve_source(first["model"])
    cal, held = _texts(first, work, chunks)
    t0 = time.perf_counter()
    imatrix = work / "imatrix.gguf"
    lc.run_tool(tools["llama-imatrix"], ["-m", str(src), "-f", str(cal), "-o", str(imatrix), "-c", "256", "-b",
                                        "256", "-t", str(threads), "--no-ppl"])
    imatrix_seconds = time.perf_counter() - t0
    base = work / "source.kld"
    t0 = time.perf_counter()
    source = lc.kl_base(tools["llama-perplexity"], src, held, base, n_ctx=256, threads=threads)
    source_row = {**source, "kl_mean": 0.0, "file_bytes": src.stat().st_size, "seconds": time.perf_counter() - t0}
    out: dict[str, Any] = {
        "model": model,
        "source": {"file": src.name, **source_row},
        "imatrix": {"tool": "llama-imatrix", "text": "the run's calibration tokens", "seconds": imatrix_seconds},
        "llama_cpp_python": lc.LLAMA_TOOLS_VERSION,
        "threads": threads,
        "heldout_sequences": chunks,
        "sizes": {},
    }
    try:
        for mix, res in runs.items():
            out["sizes"][mix] = {
                "run": RUNS[model][mix],
                "target_bits_per_weight": res["target"],
                "generations": res["methods"]["evopress"].get("generations"),
                "calibration_tokens": res["calibration_tokens"],
                "heldout_tokens": res["heldout_tokens"],
                "rows": one_size(res, mix, work, tools, imatrix, base, threads),
            }
    finally:
        base.unlink(missing_ok=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(RUNS), default="smollm2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chunks", type=int, default=None,
                    help="held-out sequences whose text llama-perplexity reads (default: all, 8 for gemma3)")
    args = ap.parse_args()
    chunks = args.chunks if args.chunks is not None else CHUNKS.get(args.model)
    t0 = time.perf_counter()
    results = compare_model(args.model, args.threads, chunks)
    results["seconds"] = time.perf_counter() - t0
    results["provenance"] = provenance()
    dest = ROOT / "results" / "llamacpp" / f"{args.model}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(results, indent=1))
    print(f"wrote {dest} in {results['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
