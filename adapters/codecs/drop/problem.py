"""Depth compression: which attention / MLP sub-blocks (or whole blocks) of a decoder to drop.

:class:`DropProblem` is a levelsearch :class:`~levelsearch.Problem` (kind ``"llm-drop"``):

- units: the attention and the MLP sub-block of every decoder layer, in execution order
  (``attn0, mlp0, attn1, mlp1, ...``), or with ``whole_blocks=True`` one unit per layer;
  level 0 = kept, 1 = dropped (its residual branch adds zero);
- budget ``"per-type"`` (default, as the reference): exactly ``k = floor(target · layers)``
  attention and ``k`` MLP sub-blocks dropped; ``"total"``: ``floor(target · units)`` units
  of any type;
- fitness: KL(dense ‖ compressed) per token on ``fidelity`` calibration tokens, with the memos,
  the anchors and the shared prefixes of :class:`~levelsearch.adapters.scoring.layerwise.LayerwiseProblem`;
  dropped sub-blocks are not computed at all (a layer with both dropped is skipped);
- per-unit error estimates: the KL of dropping each unit alone (:meth:`DropProblem.single_drop_kl`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from levelsearch import LevelSpace, Request

from ...model.models import DEFAULT_MODEL
from ...scoring.layerwise import LayerwiseProblem

__all__ = ["DropProblem", "drop_space"]


def drop_space(n_layers: int, target: float, *, whole_blocks: bool = False, budget: str = "per-type") -> LevelSpace:
    """The level space of dropping ``target`` (a fraction in (0, 1)) of the sub-blocks or blocks.

    Raises:
        ValueError: target outside (0, 1), too small to drop anything, or an unknown budget.
    """
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0.0 < float(target) < 1.0:
        raise ValueError(f"target must be a fraction of blocks to drop, strictly between 0 and 1, got {target!r}")
    if budget not in ("per-type", "total"):
        raise ValueError(f"budget must be 'per-type' or 'total', got {budget!r}")
    if whole_blocks:
        k = math.floor(target * n_layers)
        if k < 1:
            raise ValueError(f"target {target} drops no block of {n_layers}; raise it to at least {1 / n_layers:.3f}")
        return LevelSpace(2, n_units=n_layers, total=k)
    if budget == "total":
        k = math.floor(target * 2 * n_layers)
        if k < 1:
            raise ValueError(f"target {target} drops no sub-block of {2 * n_layers}; raise it")
        return LevelSpace(2, n_units=2 * n_layers, total=k)
    k = math.floor(target * n_layers)
    if k < 1:
        raise ValueError(
            f"target {target} drops no sub-block of {n_layers} layers; raise it to at least {1 / n_layers:.3f}"
        )
    return LevelSpace(2, n_units=2 * n_layers, total=k, groups=["attn", "mlp"] * n_layers)


class DropProblem(LayerwiseProblem):
    """Search which sub-blocks of a causal LM to drop (see the module docstring).

    Args:
        model: ``"smollm2"`` (offline default), a model directory, GGUF file or hub id.
        target: fraction of sub-blocks (or blocks) to drop, in (0, 1); default 0.25.
        whole_blocks: units are whole decoder layers instead of attention/MLP sub-blocks.
        budget: ``"per-type"`` (k attention + k MLP) or ``"total"`` (see :func:`drop_space`).
        options: the model and data (``data``, ``seq_len``, ``calibration_tokens`` (the largest
            fidelity a request may ask for), ``heldout_tokens``, ``top_k``, ``chunk_tokens``,
            ``device``, ``dtype``, ``threads``, ``seed``, ``loaded``, ``anchor_variants``): see
            :meth:`~levelsearch.adapters.scoring.layerwise.LayerwiseProblem._setup_model_and_data`.

    Its default schedule (what ``evopress`` runs when a run config names none) is the paper's ``drop``
    schedule on a GPU whose pool holds 32,768 tokens, else the CPU schedule of
    :meth:`~levelsearch.adapters.scoring.layerwise.LayerwiseProblem.default_schedule`; its default start
    is compress's, the best published heuristic (:meth:`default_start`).
    """

    name = "llm-drop"
    gpu_preset = "drop"

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        target: float = 0.25,
        whole_blocks: bool = False,
        budget: str = "per-type",
        **options: Any,
    ) -> None:
        self._setup_model_and_data(model, **options)
        self.whole_blocks = bool(whole_blocks)
        space = drop_space(self.map.n_layers, target, whole_blocks=whole_blocks, budget=budget)
        super().__init__(space)
        self.target, self.budget = float(target), budget
        self.unit_layer = np.array([i for i in range(self.map.n_layers) for _ in range(1 if whole_blocks else 2)])
        self._start: np.ndarray | None = None

    @property
    def codec(self) -> Any:
        """The ``drop`` codec (its profile label and export description)."""
        from .. import get_codec

        return get_codec("drop")

    # ------------------------------------------------------------------ identity
    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model_name,
            "target": self.target,
            "whole_blocks": self.whole_blocks,
            "budget": self.budget,
            **self.settings,
            "content": self.content,
            "space": self.space.to_dict(),
        }

    def unit_names(self) -> list[str]:
        """Human names of the units (``attn3``, ``mlp3`` or ``block3``)."""
        if self.whole_blocks:
            return [f"block{i}" for i in range(self.map.n_layers)]
        return [f"{t}{i}" for i in range(self.map.n_layers) for t in ("attn", "mlp")]

    def dropped_modules(self, levels: np.ndarray) -> tuple[list[int], list[int]]:
        """Layer indices whose attention, resp. MLP, is dropped by ``levels``."""
        keys = self.layer_keys(levels)
        return [i for i, k in enumerate(keys) if k[0]], [i for i, k in enumerate(keys) if k[1]]

    def layer_keys(self, levels: np.ndarray | Sequence[int]) -> list[tuple[int, int]]:
        """Per layer ``(attention dropped, MLP dropped)`` as 0/1."""
        lv = np.asarray(levels, dtype=np.int64)
        if self.whole_blocks:
            return [(int(v), int(v)) for v in lv]
        return [(int(lv[2 * i]), int(lv[2 * i + 1])) for i in range(self.map.n_layers)]

    # ------------------------------------------------------------------ evaluation
    def _layer_fn(self, kwargs: list[dict[str, Any]]) -> Any:
        runner, amap = self.runner, self.map

        def apply(layer: int, h: torch.Tensor, key: Any) -> torch.Tensor:
            a, m = key
            if a and m:
                return h
            runner.drop_module(amap.attn[layer], bool(a))
            runner.drop_module(amap.mlp[layer], bool(m))
            return runner.run_layer(layer, h, kwargs[layer])

        return apply

    def dense_keys(self) -> list[tuple[int, int]]:
        return [(0, 0)] * self.map.n_layers

    def candidate_keys(self, candidate: Any) -> tuple[tuple[int, int], ...]:
        return tuple(self.layer_keys(candidate))

    def unit_type(self, unit: int) -> str:
        """``attn``, ``mlp`` or ``block``: what the profile plot groups units by."""
        return "block" if self.whole_blocks else ("attn", "mlp")[unit % 2]

    def profile(self, levels: np.ndarray) -> np.ndarray:
        """1.0 for each dropped unit, 0.0 for each kept one."""
        return np.asarray(levels, dtype=np.float64)

    def export_state(self, levels: np.ndarray) -> dict[str, torch.Tensor]:
        """The state dict to export at ``levels``: every parameter of a dropped sub-block zeroed (linear,
        ``Conv1D`` and fused-expert weights, biases, norms inside it; buffers kept), so the stock module
        computes exactly zero and the stock architecture loads the searched model (see
        :mod:`~levelsearch.adapters.formats.drop`); the live model is left uncompressed."""
        attn, mlp = self.dropped_modules(levels)
        subs = [self.map.attn[i] for i in attn] + [self.map.mlp[i] for i in mlp]
        zeroed = {id(p) for sub in subs for p in sub.parameters()}
        self.apply(None)
        by_id = {id(p) for p in self.model.parameters()}
        state = self.model.state_dict(keep_vars=True)
        return {k: torch.zeros_like(t) if id(t) in zeroed and id(t) in by_id else t for k, t in state.items()}

    def export_record(self, levels: np.ndarray) -> dict[str, Any]:
        """What ``levelsearch_compression.json`` says of ``levels``: the dropped layers and the units."""
        attn, mlp = self.dropped_modules(levels)
        return {"dropped_attention_layers": attn, "dropped_mlp_layers": mlp, "units": self.unit_names()}

    def apply(self, levels: np.ndarray | None) -> None:
        """Make the live model drop what ``levels`` says (``None``: nothing) by switching sub-modules' ``forward``."""
        if levels is None:
            self.runner.set_dropped([])
            return
        attn, mlp = self.dropped_modules(levels)
        self.runner.set_dropped([self.map.attn[i] for i in attn] + [self.map.mlp[i] for i in mlp])

    #: the heuristics :meth:`default_start` compares (``random`` is left out)
    START_HEURISTICS = ("shortgpt", "shortgpt-sub", "angular", "single-kl")

    def default_start(self) -> np.ndarray:
        """What ``compress --method drop`` starts from: the published heuristic
        (:mod:`~levelsearch.adapters.codecs.drop.heuristics`) with the lowest calibration KL on the whole
        pool. Measured once (statistics on up to 2,048 tokens, then one whole-pool evaluation per
        heuristic, remembered so the search does not pay for the start again); like compress's
        heuristics, these forward tokens are not in the search's budget."""
        if self._start is None:
            from .heuristics import run_heuristics

            pool = int(self.search_pool.n_tokens)
            heur = run_heuristics(self, list(self.START_HEURISTICS), n_tokens=min(2048, pool), seed=0)
            levels = [np.asarray(h["levels"], dtype=np.int64) for h in heur.values()]
            values = self.evaluate_many([Request(lv, None, 0) for lv in levels])
            for lv, v in zip(levels, values):
                self.remember(lv, v)
            self._start = levels[int(np.argmin(values))]
        return self._start.copy()

    def dense_candidate(self) -> np.ndarray:
        """The assignment of the uncompressed model (nothing dropped)."""
        return np.zeros(self.space.n_units, dtype=np.int64)

    # ------------------------------------------------------------------ measurements for heuristics
    @torch.inference_mode()
    def boundary_states(self, n_tokens: int = 2048, seed: int = 0) -> list[torch.Tensor]:
        """Dense residual-stream states at every unit boundary on ``n_tokens`` calibration tokens.

        Sub-block mode: ``2L + 1`` states ``[h0, h0 + attn0, h1, h1 + attn1, ..., hL]`` (the
        state after an attention is the layer run with its MLP dropped, so post-norms such as
        Gemma's are included). Whole blocks: ``L + 1`` layer inputs/outputs. Each ``[tokens, hidden]``.
        """
        seqs = self.calibration.batch(n_tokens, seed)
        per = max(1, self.runner.chunk_tokens // self.calibration.seq_len)
        parts: list[list[torch.Tensor]] = []
        for s in range(0, seqs.size, per):
            ids = self.calibration.tokens[torch.as_tensor(seqs[s : s + per])]
            kw = self.runner.layer_kwargs(ids)
            fn = self._layer_fn(kw)
            dense = [(0, 0)] * self.map.n_layers
            rec = self.runner.run_shared(ids, [dense], fn, lambda h, c: None, record={0})[0]
            states: list[torch.Tensor] = []
            for layer in range(self.map.n_layers):
                states.append(rec[layer].reshape(-1, rec[layer].shape[-1]))
                if not self.whole_blocks:
                    mid = fn(layer, rec[layer], (0, 1))
                    states.append(mid.reshape(-1, mid.shape[-1]))
            states.append(rec[-1].reshape(-1, rec[-1].shape[-1]))
            parts.append(states)
        return [torch.cat([p[i] for p in parts]) for i in range(len(parts[0]))]

    def single_drop_kl(self, n_tokens: int = 512, seed: int = 0) -> np.ndarray:
        """KL on ``n_tokens`` calibration tokens of dropping each unit alone (the ``dp`` baseline's input)."""
        n = self.space.n_units
        cands = [np.eye(n, dtype=np.int64)[i] for i in range(n)]
        kl, _ = self.score(cands, "calibration", self.calibration.batch(n_tokens, seed))
        return kl

    def _measure_unit_errors(self) -> np.ndarray:
        """Level 0 (kept) is 0; level 1 is the KL of dropping the unit alone on one calibration sequence
        (``seq_len`` tokens, sample seed 0: what the ``single-kl`` heuristic measures)."""
        kl = self.single_drop_kl(self.calibration.seq_len, 0)
        return np.stack([np.zeros_like(kl), kl], axis=1)
