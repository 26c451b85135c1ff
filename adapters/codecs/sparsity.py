"""The ``sparsity`` codec: unstructured sparsity of every linear layer (SparseGPT, Wanda or magnitude).

A level's value is a number of zeros: ``round(target·numel) + l·step`` for
``l = −max_offset .. max_offset`` within ``[0, numel]``, so every step changes the number of
nonzeros by the same ``step`` whatever the layer's size. A variant is stored as a bit mask of
its nonzeros plus the nonzero values in fp16 (≈ (1 − s)·2 + 1/8 bytes per weight).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch

from .base import Settings, WeightCodec, problem_settings, target_in

__all__ = ["SparsityCodec", "OWL_M_GRID", "encode_sparse", "decode_sparse"]

OWL_M_GRID = (3.0, 5.0, 7.0, 10.0)  # outlier thresholds M of the OWL paper's grid


def _pruners() -> dict[str, Callable[[torch.Tensor, torch.Tensor, list[int], dict[str, Any]], torch.Tensor]]:
    from ..kernels.magnitude import magnitude_prune
    from ..kernels.sparsegpt import sparsegpt_prune
    from ..kernels.wanda import wanda_prune

    return {
        "sparsegpt": lambda w, h, z, spec: sparsegpt_prune(w, h, z, block_size=int(spec.get("block_size", 128))),
        "wanda": lambda w, h, z, spec: wanda_prune(w, h, z),
        "magnitude": lambda w, h, z, spec: magnitude_prune(w, z),
    }


def encode_sparse(w: torch.Tensor) -> dict[str, torch.Tensor]:
    """A pruned weight as its packed nonzero mask and its nonzero values in fp16."""
    mask = w != 0
    vals = w[mask].to(torch.float16)
    # a value too small for fp16 would silently become a zero and change the sparsity
    tiny = vals == 0
    if bool(tiny.any()):
        vals[tiny] = torch.sign(w[mask][tiny]).to(torch.float16) * torch.finfo(torch.float16).smallest_normal
    packed = np.packbits(mask.cpu().numpy().reshape(-1))
    return {"mask": torch.from_numpy(packed), "values": vals.cpu()}


def decode_sparse(shape: tuple[int, int], part: Callable[[str], torch.Tensor]) -> torch.Tensor:
    """Inverse of :func:`encode_sparse` (fp32)."""
    rows, cols = shape
    mask = torch.from_numpy(np.unpackbits(part("mask").numpy())[: rows * cols].astype(bool))
    out = torch.zeros(rows * cols, dtype=torch.float32)
    out[mask] = part("values").to(torch.float32)
    return out.view(rows, cols)


class SparsityCodec(WeightCodec):
    """Per-layer unstructured sparsity (``--target`` = average sparsity, e.g. 0.5)."""

    name = "sparsity"
    profile_label = "sparsity"
    export_how = "dense weights with zeros"
    example_target = 0.5
    methods: ClassVar[tuple[str, ...]] = ("magnitude", "wanda", "sparsegpt")

    def check_spec(self, spec: dict[str, Any]) -> None:
        if spec.get("method") not in self.methods:
            raise ValueError(f"sparsity method must be one of {', '.join(self.methods)}, got {spec.get('method')!r}")
        if not 0.0 <= float(spec["target"]) <= 1.0 or int(spec["step"]) < 1 or int(spec["max_offset"]) < 0:
            raise ValueError("sparsity spec needs target in [0, 1], step >= 1 weight and max_offset >= 0")

    def level_values(self, spec: dict[str, Any], numel: int) -> list[Any]:
        base = int(round(float(spec["target"]) * numel))
        step, top = int(spec["step"]), int(spec["max_offset"])
        return [base + k * step for k in range(-top, top + 1) if 0 <= base + k * step <= numel]

    def make_variants(self, spec: dict[str, Any], w: Any, h: Any, values: list[Any]) -> list[Any]:
        return list(_pruners()[spec["method"]](w, h, values, spec))

    def keeps_level(self, spec: dict[str, Any], value: Any, variant: Any) -> bool:
        return int((variant == 0).sum()) == int(value)

    def encode(self, variant: Any) -> dict[str, Any]:
        return encode_sparse(variant)

    def decode(self, spec: dict[str, Any], value: Any, shape: tuple[int, int], part: Callable[[str], Any]) -> Any:
        return decode_sparse(shape, part)

    def layer_statistics(self, spec: dict[str, Any], pairs: list[tuple[Any, Any]]) -> dict[str, Any]:
        """OWL's layerwise outlier distribution: share of ``|W|·||X||`` entries above ``M`` times their mean."""
        from ..kernels.wanda import wanda_scores

        allv = torch.cat([wanda_scores(w, h).flatten() for w, h in pairs])
        mean = float(allv.mean())
        return {"owl": {f"{m:g}": float((allv > m * mean).float().mean()) for m in OWL_M_GRID}}

    def export_entry(self, spec: dict[str, Any], value: Any, numel: int) -> dict[str, Any]:
        return {"zeros": int(value), "sparsity": float(value / numel)}

    def make_problem(self, settings: Settings) -> Any:
        from ..sparsity import SparsityProblem

        t = target_in(settings, 0.0, 1.0, "an average sparsity strictly between 0 and 1", open_ends=True)
        return SparsityProblem(settings["model"], target=t, **problem_settings(settings))

    def baselines(self, problem: Any, *, fidelity: int, seed: int) -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
        from ..sparsity import owl_search

        return {"owl": owl_search(problem, fidelity=fidelity, seed=seed)}

    def summary(self, problem: Any, levels: np.ndarray) -> dict[str, Any]:
        return {**super().summary(problem, levels), "average": problem.average_sparsity(levels)}
