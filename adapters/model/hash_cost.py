"""What the integrity checks cost on a real model (``python -m levelsearch.adapters.model.hash_cost``)."""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any

import torch

from .cache import smollm2_cache_dir
from .integrity import (
    HASH_THREADS,
    check_safetensors,
    file_sha256,
    json_checksum,
    metadata_checksum,
    tokens_fingerprint,
    weights_fingerprint,
)
from .models import load_model

__all__ = ["measure"]


def measure(model: str = "smollm2", tokens: int = 4096, top_k: int = 256) -> dict[str, Any]:
    """Seconds each integrity check takes on ``model`` with a ``make demo``-sized run (fastest of 3).

    ``python -m levelsearch.adapters.model.hash_cost`` prints them and ``bench/hash_cost.py`` commits them.
    Measured: the full weights fingerprint (every byte of every tensor, threaded), the same on one
    thread, the data fingerprint (calibration + held-out tokens), the safetensors header check and the
    full file hash of the model file (cold: read and hashed; memoised: answered from the side file),
    the teacher checksum (on save and again on load, for the two teachers of a run) and the heuristics
    cache checksum; plus sha256 and blake2b throughput on 256 MiB, from which the cost of an 8B-parameter
    bf16 model (16 GB) is extrapolated.
    """
    def best(fn: Any) -> float:
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    m, _ = load_model(model, device="cpu")
    sd = m.state_dict()
    n_bytes = sum(t.numel() * t.element_size() for t in {t.data_ptr(): t for t in sd.values()}.values())
    out: dict[str, Any] = {"model": model, "threads": HASH_THREADS, "cpu_count": os.cpu_count()}
    out["n_tensors"] = len(sd)
    out["weight_bytes"] = n_bytes
    out["weights_fingerprint"] = best(lambda: weights_fingerprint(m))
    out["weights_fingerprint_one_thread"] = best(lambda: weights_fingerprint(m, threads=1))
    if model == "smollm2":
        f = smollm2_cache_dir() / "model.safetensors"  # built by load_model above
        out["file_bytes"] = f.stat().st_size
        out["safetensors_header_check"] = best(lambda: check_safetensors(f))
        out["file_sha256_cold"] = best(lambda: file_sha256(f, memo=False))
        file_sha256(f)
        out["file_sha256_memoised"] = best(lambda: file_sha256(f))
    n_seq = tokens // 256
    toks = [torch.randint(0, 49152, (n_seq, 256)) for _ in range(2)]
    out["data_fingerprint"] = best(lambda: tokens_fingerprint(*toks))
    teacher = {
        "logp": torch.randn(n_seq, 256, top_k).half(),
        "index": torch.randint(0, 49152, (n_seq, 256, top_k), dtype=torch.int32),
        "tail": torch.randn(n_seq, 256),
    }
    # two teachers (calibration, held-out), each hashed on save and again on load
    out["teacher_checksums"] = 4 * best(lambda: metadata_checksum(teacher, {"nll": "2.5"}))
    heur = {f"h{i}": {"levels": list(range(60)), "calibration_kl": 0.1, "seconds": 1.0} for i in range(6)}
    out["heuristics_checksum"] = 2 * best(lambda: json_checksum({"key": {"a": 1}, "heuristics": heur}))
    blob = os.urandom(1 << 28)
    gb = 1e9 / (1 << 28)
    out["sha256_seconds_per_GB"] = best(lambda: hashlib.sha256(blob).digest()) * gb
    out["blake2b_seconds_per_GB"] = best(lambda: hashlib.blake2b(blob).digest()) * gb
    rate = out["weights_fingerprint"] / n_bytes * 1e9
    out["weights_fingerprint_seconds_per_GB"] = rate
    out["extrapolated_8B_bf16_weights_fingerprint"] = 16e9 * rate / 1e9
    out["extrapolated_8B_bf16_one_thread"] = 16e9 * out["weights_fingerprint_one_thread"] / n_bytes
    out["total_demo"] = sum(
        out[k]
        for k in ("weights_fingerprint", "safetensors_header_check", "file_sha256_memoised", "data_fingerprint")
        + ("teacher_checksums", "heuristics_checksum")
        if k in out
    )
    return out


if __name__ == "__main__":  # pragma: no cover - a measurement, see measure()
    for key, value in measure().items():
        print(f"{key:40s} {value}")
