"""Cost of the full-content identities: every byte of every weight hashed, on SmolLM2-135M, extrapolated to 8B.

Usage: python bench/hash_cost.py [--out bench/results/integrity/hash_cost.json]

Writes :func:`levelsearch.adapters.model.hash_cost.measure`'s seconds (fastest of 3) with the machine's CPU
count: the in-memory weights fingerprint (threaded and on one thread), the model file's full sha256
(cold and answered from the memo), the data fingerprint, teacher and heuristics checksums, and the
sha256 / blake2b throughput that chose sha256. The 8B figures scale the measured seconds per byte to
16 GB of bf16 weights (CPU-resident; a model on a GPU adds one device-to-host copy of its weights).
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

from levelsearch.adapters.model.hash_cost import measure


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="bench/results/integrity/hash_cost.json")
    args = ap.parse_args()
    res = measure()
    res["machine"] = platform.processor() or platform.machine()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    for key, value in res.items():
        print(f"{key:40s} {value}")


if __name__ == "__main__":
    main()
