"""llama.cpp's CPU rounding of activations, emulated in the search's model, to set our figures beside its own.

ggml's CPU matrix product does not multiply a quantized weight by fp32 activations: it first rounds each row of
the activations to the weight type's *vec-dot type* (``type_traits_cpu[type].vec_dot_type`` in
``ggml/src/ggml-cpu/ggml-cpu.c``): ``Q8_0`` (blocks of 32, an fp16 scale ``amax/127``) for ``Q4_0``, ``Q5_0``,
``Q8_0``, ``IQ4_NL``; ``Q8_1`` (the same values, plus a block sum) for ``Q4_1`` and ``Q5_1``; ``Q8_K`` (blocks of
256, an fp32 scale ``-max/127`` of the signed largest value, values capped at 127) for the k-quants and the other
i-quants; fp16 for ``F16`` weights, bf16 for ``BF16``; ``F32`` weights see the activations as they are. The
source file and a quantized file are both run that way by ``llama-perplexity``, so its KL between the two holds
that rounding noise on both sides, where ours (exact fp32 products of the same dequantized weights) does not: on
an 8-bit-rounded model llama.cpp's mean KL is the larger (``bench/gguf_llama_check.py`` measures both ways).

:func:`llama_cpu_rounding` puts the rounding into a :class:`~.problem.GGUFProblem`'s model while it is open:
every decoder linear's input is rounded as its weight's *current* type says (the source's for the reference, the
candidate's level for the candidate), and the head's as its tensor's type. The attention stays fp32: run
llama.cpp with flash attention off (``-fa off``, whose products are fp32 there) for a like-for-like comparison;
its flash attention accumulates in fp16. Dense models only (expert products run as fused matmuls).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["VEC_DOT", "llama_cpu_rounding", "round_activations", "vec_dot_type"]

#: ggml weight type → the rounding ggml's CPU applies to the activations it multiplies (``None``: none)
VEC_DOT: dict[str, str | None] = {
    **dict.fromkeys(("Q4_0", "Q5_0", "Q8_0", "IQ4_NL", "MXFP4"), "Q8_0"),
    **dict.fromkeys(("Q4_1", "Q5_1"), "Q8_1"),
    "F16": "F16",
    "BF16": "BF16",
    "F32": None,
}


def vec_dot_type(weight_type: str) -> str | None:
    """The activation rounding of a ``weight_type`` product on ggml's CPU (k-quants and i-quants: ``Q8_K``)."""
    return VEC_DOT.get(weight_type, "Q8_K")


def round_activations(x: torch.Tensor, kind: str | None) -> torch.Tensor:
    """``x`` rounded along its last axis as ggml's CPU rounds a matrix product's activations to ``kind``
    (``"Q8_0"``, ``"Q8_1"``, ``"Q8_K"``, ``"F16"``, ``"BF16"``; ``None``: unchanged), in ``x``'s dtype.

    Raises:
        ValueError: an unknown ``kind``, or a last axis that is not a whole number of blocks.
    """
    if kind is None:
        return x
    if kind == "F16":
        return x.half().to(x.dtype)
    if kind == "BF16":
        return x.bfloat16().to(x.dtype)
    if kind not in ("Q8_0", "Q8_1", "Q8_K"):
        raise ValueError(f"unknown activation rounding {kind!r}: Q8_0, Q8_1, Q8_K, F16, BF16 or None")
    block = 256 if kind == "Q8_K" else 32
    n = x.shape[-1]
    if n % block:
        raise ValueError(f"rows of {n} values are not whole {kind} blocks of {block}")
    v = x.float().reshape(*x.shape[:-1], n // block, block)
    if kind == "Q8_K":  # quantize_row_q8_K_ref: iscale = -127/max of the signed largest value; d = 1/iscale (fp32)
        big = v.gather(-1, v.abs().argmax(-1, keepdim=True))
        iscale = torch.where(big != 0, -127.0 / big, torch.zeros_like(big))
        q = torch.round(iscale * v).clamp(max=127.0)  # all 0 in a block of zeros
        out = q / torch.where(big != 0, iscale, torch.ones_like(iscale))
    else:  # quantize_row_q8_0/1: d = amax/127 (stored as fp16), q = round(x/d)
        d = v.abs().amax(-1, keepdim=True) / 127.0
        q = torch.round(v * torch.where(d > 0, 1.0 / d, torch.zeros_like(d)))
        out = q * d.half().float()
    return out.reshape(x.shape).to(x.dtype)


@contextlib.contextmanager
def llama_cpu_rounding(problem: Any) -> Iterator[None]:
    """While open, ``problem``'s model (a :class:`~.problem.GGUFProblem` with a source file) rounds each linear's
    input as llama.cpp's CPU does for the weight type that linear holds (module docstring).

    Raises:
        ValueError: a problem without a source file, or a model with expert units (fused expert products).
    """
    from torch import nn

    if getattr(problem, "source", None) is None:
        raise ValueError("llama.cpp's activation rounding needs the run's source GGUF file")
    model = problem.model
    kinds: dict[int, Any] = {}  # id(module) → () -> weight type now
    for u in range(problem.n_linear):
        mod = problem.modules[u]
        if not isinstance(mod, nn.Linear):
            raise ValueError(
                f"llama.cpp's activation rounding is emulated for dense models; {problem.unit_names[u]} is an expert"
            )
        kinds[id(mod)] = lambda u=u: problem.live_type(u)
    head = model.get_output_embeddings()
    if head is not None and id(head) not in kinds:
        unit = getattr(problem, "_head_unit", None)
        if unit is not None:
            kinds[id(head)] = lambda u=unit: problem.live_type(u)
        else:
            head_type = problem.source.type_of(
                "output.weight" if "output.weight" in problem.source.tensors else "token_embd.weight"
            )
            kinds[id(head)] = lambda: head_type

    def hook(mod: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        t = kinds[id(mod)]()
        return (round_activations(args[0], None if t is None else vec_dot_type(t)), *args[1:])

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if id(m) in kinds]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
