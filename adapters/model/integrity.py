"""Fingerprints and checksums: nothing read back from disk is used unless it was checked.

Threat model: accidents and stale state (a model changed in place, an edited or damaged cache,
a half-written file), not a hostile local user with write access to the cache.

- :func:`weights_fingerprint` — sha256 over every parameter and buffer of an in-memory model:
  name, dtype, shape and *all* its bytes. What a search compresses is the in-memory model, so this
  is the identity of its weights; tensors are hashed in parallel threads (hashlib releases the GIL).
  Not the weight files' hash: a model may be changed in memory after it was loaded, or built in
  memory with no file at all, and hashing the loaded tensors is right in every case. Its cost
  (``bench/hash_cost.py``, ``bench/results/integrity/hash_cost.json``): SmolLM2-135M in fp32
  (538 MB) 0.20 s on 2 CPU threads, 0.38 s on one; an 8B-parameter bf16 model (16 GB), scaled,
  about 6 s on 2 threads and 11 s on one: a fraction of loading it. File hashes serve where a
  file is what is cached (the dequantized SmolLM2, a variant database's layer files).
- :func:`content_fingerprint` — what an LLM problem's values depend on besides its settings:
  the weights' fingerprint and the calibration and held-out tokens (hashed in full). It is part of
  the problem's :meth:`describe`, hence of the run's identity, the journal's identity and the tag
  of every cache file; the variant database records the weights' full fingerprint.
- :func:`file_sha256` — a file's full sha256, memoised by (path, size, mtime, ctime, inode) in a
  small side file of the cache (:func:`memo_path`), so a file that did not change is not read again.
- :func:`tensors_checksum` / :func:`json_checksum` / :func:`metadata_checksum` — sha256 of what a
  cache file holds (tensors, JSON, and tensors together with all their metadata), stored in it and
  compared when it is read back.
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
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .cache import cache_root

__all__ = [
    "HASH",
    "check_safetensors",
    "content_fingerprint",
    "file_sha256",
    "json_checksum",
    "memo_path",
    "metadata_checksum",
    "say_rebuild",
    "tensor_digest",
    "tensors_checksum",
    "tokens_fingerprint",
    "weights_fingerprint",
]

#: The hash of every identity and checksum: sha256 (with the CPU's SHA extensions about twice as fast as
#: blake2b here: 0.69 vs 1.37 s/GiB single-threaded, see ``bench/results/integrity/hash_cost.json``).
HASH = "sha256"
#: Threads hashing tensors at once (each hashes a whole tensor; hashlib releases the GIL).
HASH_THREADS = max(1, min(8, os.cpu_count() or 1))


def tensor_digest(t: torch.Tensor) -> bytes:
    """sha256 of a tensor's raw bytes in row-major order (any dtype: bf16, fp8 ... are hashed as bytes;
    a tensor on an accelerator is copied to the CPU first)."""
    flat = t.detach().reshape(-1)
    if flat.device.type != "cpu":
        flat = flat.cpu()
    flat = flat.contiguous()
    if flat.numel() == 0:
        return hashlib.sha256(b"").digest()
    return hashlib.sha256(flat.view(torch.uint8).numpy().data).digest()


def _named_digests(
    named: Iterable[tuple[str, torch.Tensor]], threads: int = HASH_THREADS
) -> list[tuple[str, str, bytes]]:
    """``(name, "dtype:shape" or "alias:NAME", digest)`` of every tensor, hashed in parallel; a tensor
    that is a view of the same memory as an earlier one (tied weights) is hashed once and named as an alias."""
    items = list(named)
    first: dict[tuple[Any, ...], str] = {}
    todo: list[int] = []
    heads: list[str] = []
    for i, (name, t) in enumerate(items):
        key = (t.device, t.data_ptr(), t.dtype, tuple(t.shape), tuple(t.stride())) if t.numel() else None
        if key is not None and key in first:
            heads.append(f"alias:{first[key]}")
            continue
        if key is not None:
            first[key] = name
        heads.append(f"{t.dtype}:{tuple(t.shape)}")
        todo.append(i)
    digests: dict[int, bytes] = {}
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for i, d in zip(todo, pool.map(lambda j: tensor_digest(items[j][1]), todo), strict=True):
            digests[i] = d
    return [(name, heads[i], digests.get(i, b"")) for i, (name, _) in enumerate(items)]


def weights_fingerprint(model: torch.nn.Module, *, threads: int = HASH_THREADS) -> str:
    """sha256 over every parameter and buffer of ``model``: its name, dtype, shape and all its bytes.

    A value changed anywhere gives another fingerprint. Cost: one pass over the weights' bytes at the
    hash's speed, spread over up to 8 threads (a model on an accelerator is copied to the CPU tensor by
    tensor first; ``threads``: how many hash at once); measured in ``bench/results/integrity/hash_cost.json``.
    """
    h = hashlib.sha256(b"weights-v2;")
    for name, head, digest in _named_digests(model.state_dict(keep_vars=False).items(), threads):
        h.update(f"{name}:{head}:".encode() + digest + b";")
    return h.hexdigest()


def tokens_fingerprint(*token_sets: Any) -> str:
    """sha256 over token arrays (tensors or :class:`~levelsearch.adapters.model.data.TokenSet`), in full."""
    h = hashlib.sha256()
    for ts in token_sets:
        t = getattr(ts, "tokens", ts)
        arr = t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
        h.update(f"{arr.dtype.str}:{arr.shape};".encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def content_fingerprint(model: torch.nn.Module, *token_sets: Any, weights: str | None = None) -> dict[str, str]:
    """``{"weights": ..., "data": ...}``: short sha256 prefixes of all the weights and the token sets
    (``weights``: the model's :func:`weights_fingerprint` when the caller has it already)."""
    w = weights if weights is not None else weights_fingerprint(model)
    return {"weights": w[:20], "data": tokens_fingerprint(*token_sets)[:20]}


def tensors_checksum(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 of named tensors (names, dtypes, shapes and every byte), in name order."""
    h = hashlib.sha256()
    for name, head, digest in _named_digests((n, tensors[n]) for n in sorted(tensors)):
        h.update(f"{name}:{head.replace('alias:', '=')};".encode() + digest)
    return h.hexdigest()


def json_checksum(obj: Any) -> str:
    """sha256 of ``obj`` as canonical JSON (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def metadata_checksum(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> str:
    """sha256 of named tensors *and* every metadata entry (a safetensors cache's whole content but the
    checksum itself): an edited number in the metadata fails it as an edited tensor does."""
    return json_checksum({"tensors": tensors_checksum(tensors), "metadata": dict(metadata)})


# ---------------------------------------------------------------------- file hashes, memoised
def memo_path() -> Path:
    """The side file in the cache that remembers files' sha256 by path, size, mtime, ctime and inode."""
    return cache_root() / "file-sha256.json"


def _stat_key(st: os.stat_result) -> list[int]:
    return [int(st.st_size), int(st.st_mtime_ns), int(st.st_ctime_ns), int(st.st_ino)]


#: A file changed less than this long before it was hashed is not memoised: file systems stamp times
#: coarsely (a few ms), so a write right after the hash could keep the stamps ("racy" entries, as git says).
_RACY_NS = 2_000_000_000


def _read_memo(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        body = data["files"]
        if not isinstance(body, dict) or data.get("sha256") != json_checksum(body):
            return {}
        return body
    except (OSError, ValueError, TypeError, KeyError):
        return {}  # a missing or damaged memo only costs a re-read


def file_sha256(path: str | os.PathLike[str], *, memo: bool = True) -> str:
    """The sha256 of a file's bytes, read once per version of the file.

    With ``memo`` the digest is remembered in :func:`memo_path` under the file's absolute path with
    its size, mtime, ctime and inode; a later call whose file has the same five is answered without
    reading it (any write, rename over it or ``touch`` changes one of them). Files modified in the
    last 2 seconds are hashed but not remembered.
    """
    p = Path(path).absolute()
    st = p.stat()
    mp = memo_path() if memo else None
    if mp is not None:
        entry = _read_memo(mp).get(str(p))
        if isinstance(entry, dict) and entry.get("stat") == _stat_key(st) and isinstance(entry.get("sha256"), str):
            return str(entry["sha256"])
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    digest = h.hexdigest()
    st_after = p.stat()
    recent = time.time_ns() - max(st_after.st_mtime_ns, st_after.st_ctime_ns) < _RACY_NS
    if mp is not None and _stat_key(st_after) == _stat_key(st) and not recent:
        _remember(mp, str(p), {"stat": _stat_key(st), "sha256": digest})
    return digest


def _remember(mp: Path, key: str, entry: dict[str, Any]) -> None:
    """Add one entry to the memo (atomically; entries of files that no longer exist are dropped)."""
    files = _read_memo(mp)
    files = {k: v for k, v in files.items() if os.path.exists(k)}
    files[key] = entry
    try:
        mp.parent.mkdir(parents=True, exist_ok=True)
        tmp = mp.with_name(f"{mp.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"files": files, "sha256": json_checksum(files)}))
        os.replace(tmp, mp)
    except OSError:
        pass  # a read-only cache: the digest is simply computed again next time


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
