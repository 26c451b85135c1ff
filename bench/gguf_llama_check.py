"""llama.cpp's own held-out perplexity of a finished ``--method gguf`` run's ``model.gguf``, beside ours.

    .venv/bin/python bench/gguf_llama_check.py RUN_DIR [--threads 2]

Rebuilds the run's held-out set (the default corpus, its ``calibration_tokens`` / ``heldout_tokens``, 256-token
sequences, seed 0) and runs it through llama.cpp (``make llama-cpp``); exits 1 when the two differ by more than
the export check's 1%. ``compress`` does the same check itself when llama-cpp-python is installed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from levelsearch.adapters.codecs.gguf.export import LLAMA_CPP_PPL_TOL, llama_cpp_perplexity
from levelsearch.adapters.model.data import calibration_and_heldout
from levelsearch.adapters.model.models import load_model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    res = json.loads((args.run / "results.json").read_text())
    _, tok = load_model(res["model"])  # the tokenizer of the run's model (a GGUF file or a name)
    _, held = calibration_and_heldout(
        tok,
        None,
        seq_len=256,
        calibration_tokens=int(res["calibration_tokens"]),
        heldout_tokens=int(res["heldout_tokens"]),
        seed=0,
    )
    t0 = time.perf_counter()
    theirs = llama_cpp_perplexity(args.run / "model.gguf", held.tokens.cpu().numpy(), threads=args.threads)
    ours = float(res["methods"]["evopress"]["heldout_ppl"])
    gap = theirs / ours - 1.0
    print(
        f"llama.cpp {theirs:.4f}, ours {ours:.4f}: {gap:+.2%} ({held.tokens.numel():,} tokens, "
        f"{time.perf_counter() - t0:.0f} s)"
    )
    return 0 if abs(gap) <= LLAMA_CPP_PPL_TOL else 1


if __name__ == "__main__":
    sys.exit(main())
