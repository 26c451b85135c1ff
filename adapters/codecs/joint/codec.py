"""The ``joint`` codec: a (sparsity, bit-width) pair per linear layer under one memory budget in bits.

Level ``(s, b)`` is the weight pruned to sparsity ``s`` by SparseGPT, then quantized to ``b``
bits by GPTQ with its zeros kept (same Hessian); its value is ``[zeros, bits]``. Stored like a
``quant`` variant (the pruned weights' codes are their zero points, so they decode to exactly 0).

A level's memory is ``(numel − zeros)·b`` bits of values plus a one-bit-per-weight mask when ``s > 0``
(scales and zero points, ~0.3 bits/weight at group size 128, are the same for every level and left
out). The budget is the band ``[target − tol, target]`` bits per weight over all units, kept by
repair, so a user asks for bytes, not for a knob. Its DP baseline rounds the costs (:func:`joint_dp_levels`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from ...kernels.gptq import gptq_quantize
from ...kernels.sparsegpt import sparsegpt_prune
from ..base import Settings, WeightCodec, problem_settings, target_in
from ..quant.codec import decode_quantized, encode_quantized
from .dp import joint_dp_levels

__all__ = ["JointCodec", "joint_dp_levels"]


class JointCodec(WeightCodec):
    """Per-layer sparsity and bit-width (``--target`` = memory budget in bits per weight, e.g. 3)."""

    name = "joint"
    profile_label = "bits"
    export_how = "dequantized weights, pruned ones exactly zero"
    target_help = "bits per weight (3)"
    default_target = 3.0
    formats: ClassVar[tuple[str, ...]] = ("pack-quantized", "dense", "gptq")
    example_target = 3.0
    default_spec: ClassVar[dict[str, Any]] = {
        "sparsities": (0.0, 0.25, 0.5, 0.6, 0.7),
        "bits": (2, 3, 4, 6, 8),
        "group_size": 128,
    }

    def make_spec(self, model: Any, target: float, **options: Any) -> dict[str, Any]:
        """``sparsities`` (default 0, 0.25, 0.5, 0.6, 0.7), ``bits`` (default 2, 3, 4, 6, 8), ``group_size`` (128)."""
        spec = super().make_spec(model, target, **options)
        return {
            "kind": self.name,
            "method": "sparsegpt+gptq",
            "sparsities": [float(x) for x in sorted(spec["sparsities"])],
            "bits": sorted(int(b) for b in spec["bits"]),
            "group_size": spec["group_size"],
        }

    def amount(self, spec: dict[str, Any], value: Any, numel: int) -> float:
        """Memory in bits: values kept × bits, plus a mask bit per weight if pruned."""
        z, b = int(value[0]), int(value[1])
        return float((numel - z) * b + (numel if z > 0 else 0))

    def check_spec(self, spec: dict[str, Any]) -> None:
        if spec.get("method") != "sparsegpt+gptq":
            raise ValueError(f"joint method must be 'sparsegpt+gptq', got {spec.get('method')!r}")
        if any(not 0.0 <= float(x) < 1.0 for x in spec["sparsities"]) or any(
            not 1 <= int(b) <= 8 for b in spec["bits"]
        ):
            raise ValueError("joint spec needs sparsities in [0, 1) and bit-widths in 1..8")

    def level_values(self, spec: dict[str, Any], numel: int) -> list[Any]:
        return [[int(round(float(s) * numel)), int(b)] for s in spec["sparsities"] for b in spec["bits"]]

    def make_variants(self, spec: dict[str, Any], w: Any, h: Any, values: list[Any]) -> list[Any]:

        # prune once per sparsity (SparseGPT), then quantize each pruned weight at every bit-width
        # with its zeros kept (GPTQ on the same Hessian)
        bits = [int(b) for b in spec["bits"]]
        zero_counts = list(dict.fromkeys(int(v[0]) for v in values))
        pruned = sparsegpt_prune(w, h, zero_counts, block_size=int(spec.get("block_size", 128)))
        out: list[Any] = []
        for k in range(len(zero_counts)):
            mask = pruned[k] == 0
            out.extend(gptq_quantize(pruned[k], h, bits, group_size=spec.get("group_size", 128), zero_mask=mask))
        return out

    def keeps_level(self, spec: dict[str, Any], value: Any, variant: Any) -> bool:
        # every pruned weight decodes to exactly 0 (others may round to 0 too), codes stay within the bits
        zeros, bits = int(value[0]), int(value[1])
        in_bits = variant.bits == bits and int(variant.codes.max()) < 2**bits
        return in_bits and int((variant.dequantize() == 0).sum()) >= zeros

    def encode(self, variant: Any) -> dict[str, Any]:
        return encode_quantized(variant)

    def decode(self, spec: dict[str, Any], value: Any, shape: tuple[int, int], part: Callable[[str], Any]) -> Any:
        return decode_quantized(int(value[1]), spec.get("group_size", 128), shape, part)

    def dense(self, variant: Any) -> Any:
        return variant.dequantize()

    def export_entry(self, spec: dict[str, Any], value: Any, numel: int) -> dict[str, Any]:
        return {
            "zeros": int(value[0]),
            "sparsity": float(value[0] / numel),
            "bits": int(value[1]),
            "group_size": spec.get("group_size"),
        }

    def make_problem(self, settings: Settings) -> Any:
        # the problem's class resolves its codec through the registry when it is made: imported on use
        from .problem import JointProblem

        return JointProblem(settings["model"], target=self.check_target(settings), **problem_settings(settings))

    def check_target(self, settings: Settings) -> float:
        return target_in(settings, 1.0, 8.0, "the memory budget in bits per weight (e.g. 3)")

    def dp_levels(self, problem: Any, *, seed: int, errors: np.ndarray | None = None) -> np.ndarray:
        return joint_dp_levels(problem, seed=seed, errors=errors)

    def summary(self, problem: Any, levels: np.ndarray) -> dict[str, Any]:
        members = problem.member_levels(levels)  # every unit's level (a tied search's expanded)
        pairs = [problem.db.values(n)[int(lv)] for n, lv in zip(problem.unit_names, members)]
        sb = [(float(z / problem.numel[u]), int(b)) for u, (z, b) in enumerate(pairs)]
        return {**super().summary(problem, levels), "sparsity_bits": sb}
