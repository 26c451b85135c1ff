"""Build the SmolLM2-135M variant databases used by the sparsity / quantization benchmarks.

Prints build time and size of each database. Resumable: run again after a kill.

    .venv/bin/python bench/smollm2_databases.py [--only quant|sparsity-0.5|sparsity-0.7] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch
from levelsearch.adapters.codecs.quant.problem import quant_spec
from levelsearch.adapters.codecs.sparsity.problem import sparsity_spec
from levelsearch.adapters.model.data import calibration_and_heldout
from levelsearch.adapters.model.models import load_model
from levelsearch.adapters.weights.database import build_database, default_database_dir


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", action="append", default=None)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_model("smollm2")
    cal, _ = calibration_and_heldout(tok)
    calib = {"source": "pydoc_data.topics", "tokens": cal.n_tokens, "seq_len": cal.seq_len, "split_seed": 0}
    specs = {
        "quant": quant_spec(model),
        "sparsity-0.5": sparsity_spec(model, 0.5),
        "sparsity-0.7": sparsity_spec(model, 0.7),
    }
    for name, spec in specs.items():
        if args.only and name not in args.only:
            continue
        root = default_database_dir("smollm2", spec, calib)
        t0 = time.perf_counter()
        db = build_database(root, model, cal.tokens, spec, model_id="smollm2", calibration=calib)
        wall = time.perf_counter() - t0
        dense16 = sum(2 * db.shape(u)[0] * db.shape(u)[1] * len(db.values(u)) for u in db.unit_names)
        print(
            f"{name}: {root}\n  wall {wall:.0f} s this run, compression time {db.manifest['build_seconds']:.0f} s, "
            f"size {db.size_bytes() / 2**20:.0f} MiB (dense fp16 per level would be {dense16 / 2**20:.0f} MiB), "
            f"levels per unit {max(len(db.values(u)) for u in db.unit_names)}",
            flush=True,
        )


if __name__ == "__main__":
    main()
