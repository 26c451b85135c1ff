"""Compressed checkpoints that engines load, their loader and the check that they are the searched model.

Formats, by compression method (the first is the default of ``levelsearch compress``):

========  ==================  ==================================================================
method    format              what is written, and what loads it
========  ==================  ==================================================================
drop      ``drop``            whole dropped layers removed and renumbered, sub-blocks dropped alone
                              written as zeros that compute exactly zero (stock loader;
                              :func:`load_compressed` skips them)
drop      ``zeroed``          the dense file with dropped sub-blocks' parameters zeroed (stock
                              loader, dense size and speed)
drop      ``drop-lean``       as ``drop``, sub-blocks dropped alone left out (smaller; the stock
                              loader refuses it, :func:`load_compressed` runs it)
quant     ``pack-quantized``  compressed-tensors, one config group per bit-width, int32-packed
                              codes, group scales and packed zero points (transformers + the
                              ``compressed-tensors`` package; vLLM)
quant     ``gptq``            GPTQ (``qweight``/``qzeros``/``scales``/``g_idx``) with a per-module
                              ``dynamic`` map: 2/3/4/8 bits for vLLM's ``--quantization gptq``
                              (:mod:`.gptq`; :func:`load_compressed`; stock transformers needs
                              optimum and gptqmodel, and refuses it without them)
joint     ``pack-quantized``  as quant, the pruned weights' codes at their zero points
joint     ``gptq``            as quant, the pruned weights' codes at their zero points
sparsity  ``sparse-bitmask``  compressed-tensors' bitmask layout: a bit per weight plus the nonzero
                              values (:func:`load_compressed`; stock transformers refuses it)
any       ``dense``           the weights each level stands for, dense (stock loader)
========  ==================  ==================================================================

Each writer is :func:`export` (``format=`` one of :func:`formats_for`); :func:`check_export` reloads
the result with :func:`load_compressed` and with the stock ``AutoModelForCausalLM.from_pretrained`` and
compares their logits with the search's: the stock loader must reproduce them or refuse the directory
(a tensor it would initialise at random fails the check); the check fails loudly (see :mod:`.verify`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FORMATS", "check_format", "export", "export_drop", "formats_for", "load_compressed", "check_export"]

#: formats per compression method, the default first
FORMATS: dict[str, tuple[str, ...]] = {
    "drop": ("drop", "zeroed", "drop-lean"),
    "quant": ("pack-quantized", "dense", "gptq"),
    "joint": ("pack-quantized", "dense", "gptq"),
    "sparsity": ("sparse-bitmask", "dense"),
}


def formats_for(method: str) -> tuple[str, ...]:
    """The formats a compression ``method`` can be written in, its default first (``("dense",)`` for plug-ins)."""
    return FORMATS.get(method, ("dense",))


def check_format(method: str, format: str | None, whose: str | None = None) -> str:
    """The format an export of ``method`` is written in: ``format``, or ``method``'s default when ``None``.

    Raises:
        ValueError: one line, when ``format`` does not fit ``method`` (the fitting ones are listed);
            ``whose`` names the method in it (default ``--method METHOD``).
    """
    fits = formats_for(method)
    if format is None:
        return fits[0]
    if str(format) not in fits:
        who = whose or f"--method {method}"
        raise ValueError(f"--format {format} does not fit {who}; use one of {', '.join(fits)}")
    return str(format)


def export_drop(
    problem: Any, levels: np.ndarray, out: str | Path, info: dict[str, Any] | None = None, *, lean: bool = False
) -> Path:
    """Write a :class:`~..codecs.drop.problem.DropProblem`'s model at ``levels`` in the ``drop`` format
    (``lean``: ``drop-lean``)."""
    from .drop import write_drop

    lv = problem.space.validate(levels)
    attn, mlp = problem.dropped_modules(lv)
    problem.apply(None)
    meta = {"method": "drop", "levels": lv.tolist(), "units": problem.unit_names(), **(info or {})}
    return write_drop(problem.model, problem.tokenizer, attn, mlp, out, meta, lean=lean)


def export(
    problem: Any,
    levels: np.ndarray,
    out: str | Path,
    *,
    method: str,
    format: str | None = None,
    info: dict[str, Any] | None = None,
) -> Path:
    """Write ``problem``'s model at ``levels`` into ``out`` in ``format`` (default: ``method``'s first).

    Raises:
        ValueError: a format that does not fit the method (the fitting ones are listed).
    """
    fmt = check_format(method, format)
    info = {**(info or {}), "format": fmt}
    if fmt in ("drop", "drop-lean"):
        return export_drop(problem, levels, out, info, lean=fmt == "drop-lean")
    if fmt == "pack-quantized":
        from .ctensors import write_pack_quantized

        return write_pack_quantized(problem, levels, out, info)
    if fmt == "gptq":
        from .gptq import write_gptq

        return write_gptq(problem, levels, out, info)
    if fmt == "sparse-bitmask":
        from .ctensors import write_sparse_bitmask

        return write_sparse_bitmask(problem, levels, out, info)
    # zeroed / dense: the codec's own export, the dense form the stock architecture loads
    from ..codecs import get_codec

    path = Path(get_codec(method).export(problem, levels, out, {**info, "loader": "transformers"}))
    return path


def __getattr__(name: str) -> Any:  # the loader and the check, imported on first use
    if name == "load_compressed":
        from .loader import load_compressed

        return load_compressed
    if name == "check_export":
        from .verify import check_export

        return check_export
    raise AttributeError(name)
