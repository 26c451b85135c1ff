"""Fingerprints and checksums: nothing read back from disk is used unless it was checked.

- :func:`content_fingerprint` — what an LLM problem's values depend on besides its settings:
  the model's weights (every tensor's name, dtype and shape plus a strided sample of its
  values, so it costs the same few milliseconds per tensor whatever the model's size) and
  the calibration and held-out tokens (hashed in full: a changed data file at the same
  path, another tokenizer or split gives another fingerprint). It is part of the
  problem's :meth:`describe`, hence of the run's identity, the journal's identity and the
  tag of every cache file.
- :func:`tensors_checksum` / :func:`json_checksum` — sha256 of what a cache file holds,
  stored in it and compared when it is read back.
- :func:`check_safetensors` — a safetensors file's header parses and its size covers every
  tensor (a truncated download or cache is a one-line ``ValueError``, not a traceback).
- :func:`say_rebuild` — the one line printed when a cache is refused and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "SAMPLE_PER_TENSOR",
    "check_safetensors",
    "content_fingerprint",
    "json_checksum",
    "say_rebuild",
    "tensors_checksum",
    "tokens_fingerprint",
    "weights_fingerprint",
]

#: Values sampled from each weight tensor by :func:`weights_fingerprint` (64 evenly spaced runs of 64).
SAMPLE_PER_TENSOR = 4096
_BLOCK = 64
_BLOCKS = SAMPLE_PER_TENSOR // _BLOCK


def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of every parameter and buffer: name, dtype, shape and an evenly strided sample of its values.

    :data:`SAMPLE_PER_TENSOR` values in evenly spaced runs (the first and last values included)
    are hashed, so the cost grows with the number of tensors, not their size (SmolLM2-135M: 30 tensors
    per layer, a few ms; an 8B model: the same per tensor).
    """
    h = hashlib.sha256()
    for name, t in model.state_dict(keep_vars=False).items():
        flat = t.detach().reshape(-1)
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        n = flat.numel()
        if n == 0:
            continue
        if flat.dtype == torch.bfloat16:
            flat = flat.view(torch.int16)
        if n > SAMPLE_PER_TENSOR:
            # _BLOCKS evenly spaced runs of _BLOCK values (the first and the last run included): few
            # memory pages touched per tensor, whatever its size; plain slices (no indexing kernel)
            starts = [k * (n - _BLOCK) // (_BLOCKS - 1) for k in range(_BLOCKS)]
            if flat.device.type == "cpu":
                arr = flat.numpy()
                h.update(b"".join(arr[s : s + _BLOCK].tobytes() for s in starts))
                continue
            flat = torch.cat([flat[s : s + _BLOCK] for s in starts])
        h.update(flat.cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def tokens_fingerprint(*token_sets: Any) -> str:
    """sha256 over token arrays (tensors or :class:`~levelsearch.adapters.data.TokenSet`), in full."""
    h = hashlib.sha256()
    for ts in token_sets:
        t = getattr(ts, "tokens", ts)
        arr = t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
        h.update(f"{arr.dtype.str}:{arr.shape};".encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def content_fingerprint(model: torch.nn.Module, *token_sets: Any) -> dict[str, str]:
    """``{"weights": ..., "data": ...}``: short sha256 prefixes of the weights and the token sets."""
    return {"weights": weights_fingerprint(model)[:20], "data": tokens_fingerprint(*token_sets)[:20]}


def tensors_checksum(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 of named tensors (names, dtypes, shapes and every byte), in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def json_checksum(obj: Any) -> str:
    """sha256 of ``obj`` as canonical JSON (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def check_safetensors(path: str | os.PathLike[str]) -> None:
    """Check that a safetensors file is whole: its header parses and its size covers every tensor.

    Reads the header only (a few KB), so it is cheap for any model size.

    Raises:
        ValueError: the file is empty, truncated or its header is damaged (one line, naming it).
    """
    p = Path(path)
    size = p.stat().st_size
    why = None
    with open(p, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            why = f"{size} bytes, no header"
        else:
            (n,) = struct.unpack("<Q", head)
            if n > 100_000_000 or 8 + n > size:
                why = f"header of {n} bytes in a file of {size}"
            else:
                try:
                    header = json.loads(f.read(n))
                    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
                except (ValueError, TypeError, KeyError, IndexError, AttributeError):
                    why = "unreadable header"
                else:
                    if 8 + n + end > size:
                        why = f"{size} bytes, its header needs {8 + n + end}"
    if why is not None:
        raise ValueError(f"{p} is truncated or damaged ({why}); delete it and download or rebuild it")


def say_rebuild(path: str | os.PathLike[str], reason: str) -> None:
    """Print the one line saying a cache file is not used and is being rebuilt."""
    print(f"levelsearch: {path} {reason}; rebuilding it", file=sys.stderr, flush=True)


def measure(model: str = "smollm2", tokens: int = 4096, top_k: int = 256) -> dict[str, float]:
    """Seconds each integrity check takes on ``model`` with a ``make demo``-sized run (median of 3).

    ``python -m levelsearch.adapters.integrity`` prints them. Measured: the weights
    fingerprint, the data fingerprint (calibration + held-out tokens), the safetensors header
    check of the model file, the teacher checksum (computed on save and again on load, for
    the two teachers of a run) and the heuristics cache checksum; plus, to extrapolate to a
    larger model, the fingerprint of one 100M-value tensor and sha256 throughput (what a
    variant database's layer files cost to verify per GB).
    """
    import time

    from .models import _cached_smollm2, load_model

    def best(fn: Any) -> float:
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return sorted(times)[1]

    m, _ = load_model(model, device="cpu")
    out: dict[str, float] = {}
    out["n_tensors"] = float(len(m.state_dict()))
    out["weights_fingerprint"] = best(lambda: weights_fingerprint(m))
    if model == "smollm2":
        f = _cached_smollm2() / "model.safetensors"
        out["safetensors_header_check"] = best(lambda: check_safetensors(f))
    n_seq = tokens // 256
    toks = [torch.randint(0, 49152, (n_seq, 256)) for _ in range(2)]
    out["data_fingerprint"] = best(lambda: tokens_fingerprint(*toks))
    teacher = {
        "logp": torch.randn(n_seq, 256, top_k).half(),
        "index": torch.randint(0, 49152, (n_seq, 256, top_k), dtype=torch.int32),
        "tail": torch.randn(n_seq, 256),
    }
    # two teachers (calibration, held-out), each hashed on save and again on load
    out["teacher_checksums"] = 4 * best(lambda: tensors_checksum(teacher))
    heur = {f"h{i}": {"levels": list(range(60)), "calibration_kl": 0.1, "seconds": 1.0} for i in range(6)}
    out["heuristics_checksum"] = 2 * best(lambda: json_checksum({"key": {"a": 1}, "heuristics": heur}))
    big = torch.nn.Linear(10_000, 10_000, bias=False)
    out["fingerprint_of_one_100M_tensor"] = best(lambda: weights_fingerprint(big))
    blob = os.urandom(1 << 28)
    out["sha256_seconds_per_GB"] = best(lambda: hashlib.sha256(blob).digest()) * 4
    out["total_demo"] = sum(
        out[k]
        for k in (
            "weights_fingerprint",
            "safetensors_header_check",
            "data_fingerprint",
            "teacher_checksums",
            "heuristics_checksum",
        )
        if k in out
    )
    return out


if __name__ == "__main__":  # pragma: no cover - a measurement, see measure()
    for key, value in measure().items():
        print(f"{key:32s} {value:.4f}")
