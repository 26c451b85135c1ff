"""The ``sparsity`` codec: unstructured sparsity of every linear layer (SparseGPT, Wanda or magnitude).

A level's value is a number of zeros: ``round(target·numel) + l·step`` for
``l = −max_offset .. max_offset`` within ``[0, numel]``, so every step changes the number of
nonzeros by the same ``step`` whatever the layer's size. A variant is stored as a bit mask of
its nonzeros plus the nonzero values in fp16 (≈ (1 − s)·2 + 1/8 bytes per weight).

A level's cost in the level space is its offset ``l`` and the budget ``Σ l = 0``: the total number of
zeros is exactly that of the uniform profile (average sparsity ``target``). Its baselines besides
uniform, DP and random: OWL (:func:`owl_search`, its outlier statistics computed while the database is built).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch

from levelsearch import LevelSpace

from ...kernels.magnitude import magnitude_prune
from ...kernels.sparsegpt import sparsegpt_prune
from ...kernels.wanda import wanda_prune, wanda_scores
from ..base import Settings, WeightCodec, problem_settings, target_in
from .owl import OWL_LAMBDAS, OWL_M_GRID, owl_levels, owl_search

__all__ = ["SparsityCodec", "OWL_M_GRID", "OWL_LAMBDAS", "encode_sparse", "decode_sparse", "owl_levels", "owl_search"]

STEP_FRACTION = 0.04  # default level step: 4% of the mean linear layer's weights


def _pruners() -> dict[str, Callable[[torch.Tensor, torch.Tensor, list[int], dict[str, Any]], torch.Tensor]]:

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
    target_help = "average sparsity (0.5)"
    default_target = 0.5
    formats: ClassVar[tuple[str, ...]] = ("sparse-bitmask", "dense")
    example_target = 0.5
    methods: ClassVar[tuple[str, ...]] = ("magnitude", "wanda", "sparsegpt")
    default_spec: ClassVar[dict[str, Any]] = {"method": "sparsegpt", "step": None, "max_offset": 4}
    budget_defaults: ClassVar[dict[str, Any]] = {}

    def make_spec(self, model: Any, target: float, **options: Any) -> dict[str, Any]:
        """``step`` (weights per level step, the same for every layer) defaults to 4% of the mean unit's size;
        ``max_offset`` levels on each side of the target (default 4)."""
        if not 0.0 <= float(target) < 1.0:
            raise ValueError(f"target sparsity must be a fraction in [0, 1), got {target}")
        spec = super().make_spec(model, target, **options)
        if spec["step"] is None:
            sizes = [mod.weight.numel() for _, _, mod in self.units(model)]
            spec["step"] = max(1, round(STEP_FRACTION * sum(sizes) / len(sizes)))
        keys = {"target": float(target), "step": int(spec["step"]), "max_offset": int(spec["max_offset"])}
        return {"kind": spec["kind"], "method": spec["method"], **keys}

    def check_spec(self, spec: dict[str, Any]) -> None:
        if spec.get("method") not in self.methods:
            raise ValueError(f"sparsity method must be one of {', '.join(self.methods)}, got {spec.get('method')!r}")
        if not 0.0 <= float(spec["target"]) <= 1.0 or int(spec["step"]) < 1 or int(spec["max_offset"]) < 0:
            raise ValueError("sparsity spec needs target in [0, 1], step >= 1 weight and max_offset >= 0")

    def level_values(self, spec: dict[str, Any], numel: int) -> list[Any]:
        base = int(round(float(spec["target"]) * numel))
        step, top = int(spec["step"]), int(spec["max_offset"])
        return [base + k * step for k in range(-top, top + 1) if 0 <= base + k * step <= numel]

    def amount(self, spec: dict[str, Any], value: Any, numel: int) -> float:
        return int(value)  # zeros

    def level_cost(self, spec: dict[str, Any], value: Any, numel: int) -> float:
        """The level's offset from the target in steps (every step moves ``step`` weights, whatever the unit)."""
        return (int(value) - int(round(float(spec["target"]) * numel))) // int(spec["step"])

    def make_space(self, costs: list[list[float]], numel: np.ndarray, target: float, options: dict[str, Any]) -> Any:
        """Offsets summing to exactly 0: the uniform profile's number of zeros."""

        return LevelSpace([len(c) for c in costs], costs=costs, total=0)

    def describe_budget(self, target: float, options: dict[str, Any]) -> dict[str, Any]:
        return {}  # the target is in the spec

    def uniform_levels(self, problem: Any) -> np.ndarray:
        """Every unit at the target sparsity (offset 0)."""
        return np.array([c.index(0) for c in problem.costs], dtype=np.int64)

    def make_variants(self, spec: dict[str, Any], w: Any, stats: Any, values: list[Any]) -> list[Any]:
        return list(_pruners()[spec["method"]](w, stats, values, spec))

    def keeps_level(self, spec: dict[str, Any], value: Any, variant: Any) -> bool:
        return int((variant == 0).sum()) == int(value)

    def encode(self, variant: Any) -> dict[str, Any]:
        return encode_sparse(variant)

    def decode(self, spec: dict[str, Any], value: Any, shape: tuple[int, int], part: Callable[[str], Any]) -> Any:
        return decode_sparse(shape, part)

    def layer_statistics(self, spec: dict[str, Any], pairs: list[tuple[Any, Any]]) -> dict[str, Any]:
        """OWL's layerwise outlier distribution: share of ``|W|·||X||`` entries above ``M`` times their mean."""

        allv = torch.cat([wanda_scores(w, h).flatten() for w, h in pairs])
        mean = float(allv.mean())
        return {"owl": {f"{m:g}": float((allv > m * mean).float().mean()) for m in OWL_M_GRID}}

    def export_entry(self, spec: dict[str, Any], value: Any, numel: int) -> dict[str, Any]:
        return {"zeros": int(value), "sparsity": float(value / numel)}

    def make_problem(self, settings: Settings) -> Any:
        # the problem's class resolves its codec through the registry when it is made: imported on use
        from .problem import SparsityProblem

        return SparsityProblem(settings["model"], target=self.check_target(settings), **problem_settings(settings))

    def check_target(self, settings: Settings) -> float:
        return target_in(settings, 0.0, 1.0, "an average sparsity strictly between 0 and 1", open_ends=True)

    own_baselines = ("owl",)

    def baselines(self, problem: Any, *, fidelity: int, seed: int) -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
        return {"owl": owl_search(problem, fidelity=fidelity, seed=seed)}
