"""Export a searched assignment, check it, measure it: what ``levelsearch compress`` and ``levelsearch export``
both do after a search (:func:`export_and_check`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import check_format, export
from .loader import load_compressed
from .verify import check_export, sizes, throughput

__all__ = ["export_and_check", "check_new_dir"]


def check_new_dir(path: str | Path) -> Path:
    """``path`` must not exist, or be an empty directory (``ValueError``, one line, otherwise)."""
    p = Path(path)
    if p.exists() and (not p.is_dir() or any(p.iterdir())):
        raise ValueError(f"{p} exists and is not empty; choose a new --out or remove it")
    return p


def export_and_check(
    codec: Any,
    problem: Any,
    levels: np.ndarray,
    out: str | Path,
    *,
    format: str | None = None,
    info: dict[str, Any] | None = None,
    measure: bool = True,
    batch_seqs: int = 4,
) -> dict[str, Any]:
    """Write ``problem``'s model at ``levels`` into ``out`` (``format``: default the codec's first, see
    :attr:`~levelsearch.adapters.codecs.base.Codec.formats`), reload it with our loader and with the stock
    ``AutoModelForCausalLM.from_pretrained`` and compare logits (the stock loader must give the searched
    logits or refuse the directory; an :class:`~levelsearch.adapters.formats.verify.ExportCheckFailed`
    stops here), then measure it.

    Returns what ``results.json`` records under ``export``: the directory, format, loader, max |logit
    diff| and tolerance, what the stock loader did (``stock``: ``loads`` and its max |logit diff|, or the
    error it raised), seconds; with ``measure``, the weight bytes on disk against the dense model's
    (``size``) and the reloaded and dense models' tokens/s on ``batch_seqs`` held-out sequences, measured
    side by side (``speed``).
    """
    t0 = time.perf_counter()
    own = getattr(codec, "export_and_check", None)
    if callable(own) and format in (None, "own", codec.formats[0]):
        # a codec with a file format of its own (one .gguf file, say) writes, checks and measures it itself
        return dict(own(problem, levels, out, info=info))
    fmt = check_format(str(codec.name), format, fits=codec.formats)
    path = Path(export(problem, levels, out, method=str(codec.name), format=fmt, info=info, codec=codec))
    checked = check_export(problem, levels, path)
    entry: dict[str, Any] = {"dir": str(path), "format": fmt, **checked}
    entry["seconds"] = time.perf_counter() - t0
    if not measure:
        return entry
    entry["size"] = sizes(problem, path)
    dev = next(problem.model.parameters()).device
    dtype = next(problem.model.parameters()).dtype
    reloaded = load_compressed(path, dtype=dtype, device=dev)
    problem.apply(None)
    ids = problem.heldout.tokens[:batch_seqs].to(dev)

    def run(model: Any) -> Any:
        return lambda x: model(input_ids=x, use_cache=False)

    with torch.inference_mode():
        speed = throughput({"exported": run(reloaded), "dense": run(problem.model)}, ids)
    speed["speedup"] = speed["exported_tokens_per_s"] / speed["dense_tokens_per_s"]
    entry["speed"] = speed
    return entry
