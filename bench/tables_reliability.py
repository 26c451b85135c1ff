"""Published tables of the reliability checks' cost, built from committed files by ``bench/tables.py``."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _seconds(x: float) -> str:
    return f"{x * 1000:.1f} ms" if x < 0.1 else f"{x:.2f} s"


def hash_cost() -> str:
    """What the full-content identities cost on SmolLM2-135M (``python bench/hash_cost.py``)."""
    d = json.loads((RESULTS / "integrity" / "hash_cost.json").read_text())
    gb = d["weight_bytes"] / 1e9
    rows = [
        (f"every weight tensor in memory, {gb:.3f} GB fp32, {d['threads']} threads", d["weights_fingerprint"]),
        ("the same on one thread", d["weights_fingerprint_one_thread"]),
        (f"a {d['file_bytes'] / 1e9:.3f} GB file's sha256, first read", d["file_sha256_cold"]),
        ("the same file's sha256, remembered (path, size, mtime, ctime, inode)", d["file_sha256_memoised"]),
        ("calibration and held-out tokens", d["data_fingerprint"]),
        ("teacher checksums", d["teacher_checksums"]),
        ("all of it for the demo's problem", d["total_demo"]),
        ("an 8B model in bf16 (16 GB), extrapolated", d["extrapolated_8B_bf16_weights_fingerprint"]),
    ]
    lines = ["| what is hashed | time |", "|---|---|"]
    lines += [f"| {what} | {_seconds(t)} |" for what, t in rows]
    return "\n".join(lines)


TABLES = {"hash-cost": hash_cost}
