"""Compressed checkpoints that engines load, their loader and the check that they are the searched model.

A codec names the formats its model can be written in (:attr:`~levelsearch.adapters.codecs.base.Codec.formats`,
its default first; ``levelsearch compress --help`` lists each codec's). The formats any codec may name are
written here (:data:`WRITERS`); a codec writes its own others
(:meth:`~levelsearch.adapters.codecs.base.Codec.write_format`):

==================  ==========================================================================================
format              what is written, and what loads it
==================  ==========================================================================================
``pack-quantized``  compressed-tensors, one config group per bit-width, int32-packed codes, group scales and
                    packed zero points (transformers + the ``compressed-tensors`` package; vLLM); pruned
                    weights are codes at their zero points
``gptq``            GPTQ (``qweight``/``qzeros``/``scales``/``g_idx``) with a per-module ``dynamic`` map:
                    2/3/4/8 bits for vLLM's ``--quantization gptq`` (:mod:`.gptq`; :func:`load_compressed`;
                    stock transformers needs optimum and gptqmodel, and refuses it without them)
``sparse-bitmask``  compressed-tensors' bitmask layout: a bit per weight plus the nonzero values
                    (:func:`load_compressed`; stock transformers refuses it)
``dense``           the weights each level stands for, dense (stock loader): the codec's
                    :meth:`~levelsearch.adapters.codecs.base.Codec.export`
==================  ==========================================================================================

A codec's own formats (a layer-dropping codec's: whole layers removed, sub-blocks zeroed or left out) are
written by the codec, with the writers of this package. Each writer is :func:`export` (``format=`` one of
:func:`formats_for`); :func:`check_export` reloads the result with :func:`load_compressed` and with the
stock ``AutoModelForCausalLM.from_pretrained`` and compares their logits with the search's: the stock
loader must reproduce them or refuse the directory (a tensor it would initialise at random fails the
check); the check fails loudly (see :mod:`.verify`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..codecs.registry import CODECS, available_codecs, get_codec
from .ctensors import write_pack_quantized, write_sparse_bitmask
from .gptq import write_gptq
from .loader import load_compressed
from .verify import check_export

__all__ = ["FORMATS", "WRITERS", "check_export", "check_format", "export", "formats_for", "load_compressed"]

#: writers of the formats any codec may name: format -> ``writer(problem, levels, out, info) -> Path``
WRITERS: dict[str, Callable[..., Path]] = {
    "pack-quantized": write_pack_quantized,
    "gptq": write_gptq,
    "sparse-bitmask": write_sparse_bitmask,
}


def formats_for(method: str) -> tuple[str, ...]:
    """The formats a compression ``method`` can be written in, its default first (its codec's
    :attr:`~levelsearch.adapters.codecs.base.Codec.formats`; ``("dense",)`` for a method that is no codec)."""
    if method not in available_codecs():
        return ("dense",)
    return tuple(CODECS.get(method).formats)


def check_format(
    method: str, format: str | None, whose: str | None = None, *, fits: tuple[str, ...] | None = None
) -> str:
    """The format an export of ``method`` is written in: ``format``, or ``method``'s default when ``None``.

    ``fits``: the formats of the run's codec object (default: :func:`formats_for` ``method``).

    Raises:
        ValueError: one line, when ``format`` does not fit ``method`` (the fitting ones are listed);
            ``whose`` names the method in it (default ``--method METHOD``).
    """
    fits = tuple(fits) if fits is not None else formats_for(method)
    if format is None:
        return fits[0]
    if str(format) not in fits:
        who = whose or f"--method {method}"
        raise ValueError(f"--format {format} does not fit {who}; use one of {', '.join(fits)}")
    return str(format)


def export(
    problem: Any,
    levels: np.ndarray,
    out: str | Path,
    *,
    method: str,
    format: str | None = None,
    info: dict[str, Any] | None = None,
    codec: Any = None,
) -> Path:
    """Write ``problem``'s model at ``levels`` into ``out`` in ``format`` (default: ``method``'s first); ``codec``:
    the run's codec object (default: a fresh one of ``method``).

    Raises:
        ValueError: a format that does not fit the method (the fitting ones are listed).
    """
    fmt = check_format(method, format, fits=None if codec is None else codec.formats)
    info = {**(info or {}), "format": fmt}
    writer = WRITERS.get(fmt)
    if writer is not None:
        return Path(writer(problem, levels, out, info))
    return Path((codec or get_codec(method)).write_format(fmt, problem, levels, out, info))


def __getattr__(name: str) -> Any:
    if name == "FORMATS":  # built on use: a codec registered later adds its formats
        return {m: formats_for(m) for m in available_codecs()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
