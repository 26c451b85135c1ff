"""The export check, which can fail, and what an export is worth: size on disk and speed.

:func:`check_export` reloads an exported directory twice and compares each reload's logits with the
searched model's on a few held-out sequences:

- the way our loader does (:func:`load_compressed`: transformers, or our decompression for the packed
  formats and the fast path of sub-block drops);
- the way a user would, with the stock ``transformers.AutoModelForCausalLM.from_pretrained`` (and the
  quantization packages it calls for the format, where installed): it must reproduce the searched logits
  within :func:`tolerance` with no tensor missing, unexpected or of another shape (a tensor the stock
  loader initialises at random is a failure, even if the logits happen to agree), or refuse the
  directory with an error (recorded under ``stock``).

Beyond :func:`tolerance`, or with a tensor initialised at random, the directory is renamed
``NAME.FAILED`` with a ``FAILED`` file saying why, and :class:`ExportCheckFailed` (a ``ValueError``:
one line, exit 2 on the command line) is raised: a file that is not the searched model is never left
where it looks good.

:func:`sizes` compares the export's safetensors bytes with the dense model's, written by the same
writer in the same dtype; :func:`throughput` times the reloaded and the dense model side by side
(same batch, interleaved rounds, the median of each).
"""

from __future__ import annotations

import logging
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging

from levelsearch.ties import member_levels

from ..model.models import save_model
from .loader import load_compressed, read_meta

__all__ = [
    "ExportCheckFailed",
    "check_export",
    "check_stock",
    "mark_failed",
    "sizes",
    "throughput",
    "tolerance",
    "weights_bytes",
]


class ExportCheckFailed(ValueError):
    """An exported directory does not reload to the searched model's logits."""


def tolerance(dtype: torch.dtype, scale: float = 1.0) -> float:
    """Largest max |logit difference| an export may show: ``1e-4`` in fp32 (the reloaded model runs the
    same operations on the same numbers); ``1e-2 · max(1, scale)`` in bf16 / fp16, where ``scale`` is the
    largest |logit| (summation order alone moves half-precision results by that much)."""
    return 1e-4 if dtype == torch.float32 else 1e-2 * max(1.0, float(scale))


def mark_failed(path: Path, reason: str) -> Path:
    """Rename ``path`` to ``NAME.FAILED`` (replacing an older one) with a ``FAILED`` file holding ``reason``."""
    path = Path(path)
    (path / "FAILED").write_text(reason + "\n")
    dest = path.with_name(path.name + ".FAILED")
    if dest.exists():
        shutil.rmtree(dest)
    path.rename(dest)
    return dest


@torch.inference_mode()
def reference_logits(problem: Any, levels: np.ndarray, ids: torch.Tensor) -> torch.Tensor:
    """fp32 logits of ``problem``'s model at ``levels`` on ``ids`` (the live model is left uncompressed)."""
    runner = getattr(problem, "runner", None)
    if runner is not None:
        runner.layer_kwargs(ids)  # a dropped branch's zeros take the shape its real output had
    problem.apply(member_levels(problem.space, levels))
    try:
        return problem.model(input_ids=ids, use_cache=False).logits.float()
    finally:
        problem.apply(None)


@torch.inference_mode()
def check_export(problem: Any, levels: np.ndarray, path: str | Path, *, n_seq: int = 2) -> dict[str, Any]:
    """Reload ``path`` and compare its logits with ``problem``'s model at ``levels`` on ``n_seq`` held-out
    sequences; ``{"max_abs_logit_diff", "tolerance", "sequences", "loader"}`` when within tolerance.

    Raises:
        ExportCheckFailed: the difference exceeds :func:`tolerance`, or the directory does not load;
            the directory is renamed ``NAME.FAILED`` first.
    """

    path = Path(path)
    dtype = next(problem.model.parameters()).dtype
    device = next(problem.model.parameters()).device
    ids = problem.heldout.tokens[:n_seq].to(device)
    ref = reference_logits(problem, levels, ids)
    try:
        model = load_compressed(path, dtype=dtype, device=device)
        got = model(input_ids=ids, use_cache=False).logits.float()
    except Exception as exc:  # whatever the loader raises, the directory is not a usable model
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        bad = mark_failed(path, f"does not reload: {first}")
        raise ExportCheckFailed(f"export check failed: {bad} does not reload ({first})") from None
    del model
    tol = tolerance(dtype, float(ref.abs().max()))
    diff = _diff(ref, got)
    if not diff <= tol:
        bad = mark_failed(path, f"max |logit diff| {diff:.3g} > tolerance {tol:.3g}")
        raise ExportCheckFailed(
            f"export check failed: {bad} reloads to logits {diff:.3g} away from the searched model's "
            f"(tolerance {tol:.3g}); it is not the searched model"
        )
    stock = check_stock(path, ids, ref, tol, dtype=dtype, device=device)
    return {
        "max_abs_logit_diff": diff,
        "tolerance": tol,
        "sequences": int(ids.shape[0]),
        "loader": read_meta(path).get("loader", "transformers"),
        "stock": stock,
    }


def _diff(ref: torch.Tensor, got: torch.Tensor) -> float:
    return float((ref - got.float()).abs().max()) if ref.shape == got.shape else float("inf")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@torch.inference_mode()
def check_stock(
    path: str | Path,
    ids: torch.Tensor,
    ref: torch.Tensor,
    tol: float,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """Load ``path`` with the stock ``AutoModelForCausalLM.from_pretrained`` and compare its logits on ``ids``
    with ``ref``: ``{"loads": True, "max_abs_logit_diff": d}`` when they agree within ``tol``, or
    ``{"loads": False, "error": first line}`` when the stock loader refuses the directory.

    Raises:
        ExportCheckFailed: the stock loader loads the directory with a tensor missing (initialised at
            random), unexpected or of another shape, or to logits beyond ``tol``; the directory is renamed
            ``NAME.FAILED`` first.
    """

    path = Path(path)
    kwargs: dict[str, Any] = {"dtype": dtype} if dtype is not None else {"dtype": "auto"}
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity(logging.ERROR)  # its load report is read here, not printed
    hf_logging.disable_progress_bar()
    try:
        loaded: Any = AutoModelForCausalLM.from_pretrained(str(path), output_loading_info=True, **kwargs)
    except Exception as exc:  # a refusal is a correct answer: the user gets an error, not another model
        return {"loads": False, "error": _first_line(exc)}
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    model, info = loaded
    wrong = [(what, list(info.get(key) or [])) for key, what in _REPORT]
    wrong = [(what, names) for what, names in wrong if names]
    if wrong:
        what, names = wrong[0]
        first = names[0] if isinstance(names[0], str) else names[0][0]
        bad = mark_failed(path, f"stock from_pretrained: {len(names)} tensors {what} (first: {first})")
        raise ExportCheckFailed(
            f"export check failed: stock AutoModelForCausalLM.from_pretrained loads {bad} with {len(names)} "
            f"tensors {what} (first: {first}); it would not be the searched model"
        )
    model.to(ref.device if device is None else device).eval()
    diff = _diff(ref, model(input_ids=ids, use_cache=False).logits)
    if not diff <= tol:
        bad = mark_failed(path, f"stock from_pretrained: max |logit diff| {diff:.3g} > tolerance {tol:.3g}")
        raise ExportCheckFailed(
            f"export check failed: stock AutoModelForCausalLM.from_pretrained loads {bad} to logits {diff:.3g} "
            f"away from the searched model's (tolerance {tol:.3g}); it is not the searched model"
        )
    return {"loads": True, "max_abs_logit_diff": diff}


#: the stock load report's lists, each a failure when not empty, and what it means
_REPORT = (
    ("missing_keys", "initialised at random (missing from the file)"),
    ("mismatched_keys", "of another shape, initialised at random"),
    ("unexpected_keys", "in the file that the stock model ignores"),
)


def weights_bytes(path: str | Path) -> int:
    """Bytes of the directory's ``*.safetensors`` files (the weights; config and tokenizer aside)."""
    return sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))


def sizes(problem: Any, path: str | Path) -> dict[str, Any]:
    """Export's and dense model's weight bytes on disk (the dense written by the same writer, same dtype,
    into a temporary directory beside ``path``) and their ratio."""

    path = Path(path)
    problem.apply(None)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".dense-size-") as tmp:
        dense = weights_bytes(save_model(problem.model, None, Path(tmp) / "dense"))
    got = weights_bytes(path)
    return {"bytes": got, "dense_bytes": dense, "ratio": got / dense, "smaller_by": 1.0 - got / dense}


@torch.inference_mode()
def throughput(models: dict[str, Callable[[torch.Tensor], Any]], ids: torch.Tensor, rounds: int = 5) -> dict[str, Any]:
    """Tokens per second of each ``models[name](ids)`` on the same batch, measured side by side.

    One warm-up call each, then ``rounds`` rounds that call every model once in turn (so a machine
    that slows down or speeds up affects all alike); each model's figure is its median.
    """
    for fn in models.values():
        fn(ids)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, fn in models.items():
            t = time.perf_counter()
            fn(ids)
            times[name].append(time.perf_counter() - t)
    n = int(ids.numel())
    return {
        "batch": list(ids.shape),
        "rounds": rounds,
        "threads": torch.get_num_threads(),
        **{f"{name}_tokens_per_s": n / statistics.median(ts) for name, ts in times.items()},
    }
