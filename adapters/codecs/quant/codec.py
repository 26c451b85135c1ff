"""The ``quant`` codec: a bit-width per linear layer (GPTQ or round-to-nearest, group-wise min–max grid).

A level's value is a bit-width; it costs ``numel · bits`` and the budget is ``Σ numel·bits =
target·Σ numel``. With ``budget="exact"`` (default) the units are grouped by size (q/o, k/v,
gate/up/down for Llama) and each group holds the target exactly, so a level switch (one layer up a
bit, one of the same size down) keeps the budget; the target may be fractional (2.5 bits) as long as
``target × units`` of each group is a whole number. ``budget="band"`` puts all units in one group with
the band ``[target − tol, target]`` bits per weight, kept by repair. A variant is stored as its integer
codes packed to ``bits`` bits plus per-group fp32 scales and uint8 zero points.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch

from levelsearch import LevelSpace

from ...kernels.gptq import gptq_quantize
from ...kernels.grid import Quantized, pack_codes, unpack_codes
from ...kernels.rtn import rtn_quantize
from ..base import Settings, WeightCodec, problem_settings, target_in

__all__ = ["QuantCodec", "encode_quantized", "decode_quantized"]


def encode_quantized(q: Any) -> dict[str, Any]:
    """A :class:`~levelsearch.adapters.kernels.grid.Quantized` as packed codes, scales and zero points."""

    return {
        "codes": torch.from_numpy(pack_codes(q.codes, q.bits)),
        "scales": q.scales.to(torch.float32).cpu().contiguous(),
        "zeros": q.zeros.cpu().contiguous(),
    }


def decode_quantized(bits: int, group_size: int | None, shape: tuple[int, int], part: Callable[[str], Any]) -> Any:
    """The fp32 weight of a variant stored by :func:`encode_quantized`."""

    codes = unpack_codes(part("codes").numpy(), bits, shape)
    return Quantized(bits, group_size, codes, part("scales"), part("zeros")).dequantize()


class QuantCodec(WeightCodec):
    """Per-layer bit-widths (``--target`` = average bits per weight, e.g. 3 or 2.5)."""

    name = "quant"
    profile_label = "bits"
    export_how = "dequantized weights"
    target_help = "bits per weight (3)"
    default_target = 3.0
    formats: ClassVar[tuple[str, ...]] = ("pack-quantized", "dense", "gptq")
    example_target = 3.0
    methods: ClassVar[tuple[str, ...]] = ("rtn", "gptq")
    default_spec: ClassVar[dict[str, Any]] = {"method": "gptq", "bits": (2, 3, 4, 5, 6), "group_size": 128}
    budget_defaults: ClassVar[dict[str, Any]] = {"budget": "exact", "tol": 0.01}

    def make_spec(self, model: Any, target: float, **options: Any) -> dict[str, Any]:
        """``bits`` (default 2..6), ``method`` ``"gptq"`` (default) or ``"rtn"``, ``group_size`` (default 128)."""
        spec = super().make_spec(model, target, **options)
        bits = sorted(int(b) for b in spec["bits"])
        if not bits[0] <= float(target) <= bits[-1]:
            raise ValueError(
                f"target {target} bits lies outside the bit-widths {bits[0]}..{bits[-1]}; change one of them"
            )
        return {"kind": self.name, "method": spec["method"], "bits": bits, "group_size": spec["group_size"]}

    def amount(self, spec: dict[str, Any], value: Any, numel: int) -> float:
        return int(numel) * int(value)  # bits

    def make_space(self, costs: list[list[float]], numel: np.ndarray, target: float, options: dict[str, Any]) -> Any:
        """``budget="exact"``: every group of equal-size units at ``target`` bits exactly; ``"band"``: see the base."""

        if options["budget"] == "band":
            return super().make_space(costs, numel, target, options)
        labels = [f"{int(n)}" for n in numel]
        totals: dict[Any, float] = {}
        for lab, n in zip(labels, numel):
            totals[lab] = totals.get(lab, 0.0) + float(target) * float(n)
        try:
            return LevelSpace([len(c) for c in costs], costs=costs, total=totals, groups=labels)
        except ValueError as exc:
            raise ValueError(
                f"{exc}; target {target} bits is not exactly reachable in every group of equal-size layers: "
                "use budget='band'"
            ) from None

    def check_budget(self, options: dict[str, Any]) -> None:
        super().check_budget(options)
        if options["budget"] not in ("exact", "band"):
            raise ValueError(f"budget must be 'exact' or 'band', got {options['budget']!r}")

    def describe_budget(self, target: float, options: dict[str, Any]) -> dict[str, Any]:
        return {"target": float(target), "budget": options["budget"]}

    def check_spec(self, spec: dict[str, Any]) -> None:
        if spec.get("method") not in self.methods:
            raise ValueError(
                f"quantization method must be one of {', '.join(self.methods)}, got {spec.get('method')!r}"
            )
        if not spec["bits"] or any(not 1 <= int(b) <= 8 for b in spec["bits"]):
            raise ValueError("quantization spec needs bit-widths in 1..8")

    def level_values(self, spec: dict[str, Any], numel: int) -> list[Any]:
        return [int(b) for b in spec["bits"]]

    def make_variants(self, spec: dict[str, Any], w: Any, h: Any, values: list[Any]) -> list[Any]:
        """GPTQ with the unit's Hessian ``h``, or round-to-nearest (which ignores it)."""
        gs = spec.get("group_size", 128)
        if spec["method"] == "gptq":
            return gptq_quantize(w, h, values, group_size=gs, block_size=int(spec.get("block_size", 128)))

        return rtn_quantize(w, values, group_size=gs)

    def keeps_level(self, spec: dict[str, Any], value: Any, variant: Any) -> bool:
        return variant.bits == int(value) and int(variant.codes.max()) < 2 ** int(value)

    def encode(self, variant: Any) -> dict[str, Any]:
        return encode_quantized(variant)

    def decode(self, spec: dict[str, Any], value: Any, shape: tuple[int, int], part: Callable[[str], Any]) -> Any:
        return decode_quantized(int(value), spec.get("group_size", 128), shape, part)

    def dense(self, variant: Any) -> Any:
        return variant.dequantize()

    def export_entry(self, spec: dict[str, Any], value: Any, numel: int) -> dict[str, Any]:
        return {"bits": int(value), "group_size": spec.get("group_size")}

    def make_problem(self, settings: Settings) -> Any:
        # the problem's class resolves its codec through the registry when it is made: imported on use
        from .problem import QuantProblem

        return QuantProblem(settings["model"], target=self.check_target(settings), **problem_settings(settings))

    def check_target(self, settings: Settings) -> float:
        return target_in(settings, 1.0, 8.0, "the average bits per weight (e.g. 3 or 2.5)")
