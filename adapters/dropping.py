"""Depth compression: which attention / MLP sub-blocks (or whole blocks) of a decoder to drop.

:class:`DropProblem` is a levelsearch :class:`~levelsearch.Problem` (kind ``"llm-drop"``):

- units: the attention and the MLP sub-block of every decoder layer, in execution order
  (``attn0, mlp0, attn1, mlp1, ...``), or with ``whole_blocks=True`` one unit per layer;
  level 0 = kept, 1 = dropped (its residual branch adds zero);
- budget ``"per-type"`` (default, as the reference): exactly ``k = floor(target · layers)``
  attention and ``k`` MLP sub-blocks dropped; ``"total"``: ``floor(target · units)`` units
  of any type;
- fitness: KL(dense ‖ compressed) per token on ``fidelity`` calibration tokens drawn (by
  the ``sample`` seed) from a fixed pool whose dense top-k teacher is computed once.
  When a request asks for the whole pool its value does not depend on the sample, so it
  is remembered: an EvoPress parent re-evaluated in the final step costs nothing.

``evaluate_many`` shares work across a batch: candidates are run as a prefix tree over
layers (a candidate whose first difference from another is at layer ``j`` reuses layers
``< j``), dropped sub-blocks are not computed at all, and on the full pool the layer
states of the last evaluated candidates are kept (:class:`ActivationStore`) so the next
candidates start from their longest common prefix with them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from levelsearch import LevelSpace, Request

from .data import TokenSet
from .fitness import ActivationStore, kl_topk, nll_next
from .layerwise import LayerwiseProblem
from .models import DEFAULT_MODEL

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
        anchor_variants: full-pool layer states kept for reuse (default 2; each takes
            ``(layers + 1) · calibration_tokens · hidden · 4`` bytes).
        options: the model and data (``data``, ``seq_len``, ``calibration_tokens`` (the largest
            fidelity a request may ask for), ``heldout_tokens``, ``top_k``, ``chunk_tokens``,
            ``device``, ``dtype``, ``threads``, ``seed``, ``loaded``): see
            :meth:`~levelsearch.adapters.layerwise.LayerwiseProblem._setup_model_and_data`.
    """

    name = "llm-drop"

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        target: float = 0.25,
        whole_blocks: bool = False,
        budget: str = "per-type",
        anchor_variants: int = 2,
        **options: Any,
    ) -> None:
        self._setup_model_and_data(model, **options)
        self.whole_blocks = bool(whole_blocks)
        space = drop_space(self.map.n_layers, target, whole_blocks=whole_blocks, budget=budget)
        super().__init__(space)
        self.target, self.budget = float(target), budget
        self.max_fidelity = self.calibration.n_tokens
        self.store = ActivationStore(anchor_variants)
        self._memo: dict[bytes, float] = {}
        self._seq_kl: dict[tuple[Any, int], float] = {}  # (layer keys, sequence) -> KL summed over its tokens
        self._unit_errors: np.ndarray | None = None
        self.n_forward_tokens = 0  # tokens that went through at least one layer (for benchmarks)

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

    def apply(self, levels: np.ndarray | None) -> None:
        """Make the live model drop what ``levels`` says (``None``: nothing) by switching sub-modules' ``forward``."""
        if levels is None:
            self.runner.set_dropped([])
            return
        attn, mlp = self.dropped_modules(levels)
        self.runner.set_dropped([self.map.attn[i] for i in attn] + [self.map.mlp[i] for i in mlp])

    def dense_candidate(self) -> np.ndarray:
        """The assignment of the uncompressed model (nothing dropped)."""
        return np.zeros(self.space.n_units, dtype=np.int64)

    def score(
        self,
        candidates: Sequence[np.ndarray],
        which: str = "calibration",
        seqs: np.ndarray | None = None,
        *,
        with_nll: bool = False,
        record: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Mean KL per token (and mean next-token NLL when ``with_nll``) of each candidate.

        ``seqs`` selects sequences of the set (default: all). Candidates need not be
        feasible (e.g. single-unit drops). Returns ``(kl[c], nll[c])`` (nll is NaN unless asked).
        """
        ts: TokenSet = self.calibration if which == "calibration" else self.heldout
        teacher = self.teacher(which)
        seqs = np.arange(ts.n_seq) if seqs is None else np.asarray(seqs)
        keys = [tuple(self.layer_keys(c)) for c in candidates]
        kl_sum = np.zeros(len(candidates))
        nll_sum = np.zeros(len(candidates))
        n_kl = n_nll = 0
        # per-sequence KL sums of calibration candidates are remembered: a candidate evaluated
        # again on overlapping sequences (a survivor of a selection step) runs only the new ones
        memo = self._seq_kl if which == "calibration" and not with_nll else None
        # keep full-pool states only for a few candidates (memory: see ``anchor_variants``)
        use_store = record and seqs.size == ts.n_seq and len(set(keys)) <= self.store.max_variants
        per = max(1, self.runner.chunk_tokens // ts.seq_len)
        if memo is not None and not use_store:
            # sequences every candidate already knows are not run: chunk only the others, so that a
            # survivor of a nested minibatch pays just for its new sequences
            known = [r for r in seqs.tolist() if all((k, r) in memo for k in keys)]
            for r in known:
                for c, k in enumerate(keys):
                    kl_sum[c] += memo[(k, r)]
            n_kl += len(known) * ts.seq_len
            n_nll += len(known) * (ts.seq_len - 1)
            seqs = np.setdiff1d(seqs, np.asarray(known, dtype=seqs.dtype))
        for s in range(0, seqs.size, per):
            rows = torch.as_tensor(seqs[s : s + per])
            row_list = rows.tolist()
            n_kl += rows.numel() * ts.seq_len
            n_nll += rows.numel() * (ts.seq_len - 1)
            run = list(range(len(candidates)))
            if memo is not None:
                run = [
                    c
                    for c in run
                    if any((keys[c], r) not in memo for r in row_list) or (use_store and not self.store.has(keys[c]))
                ]
                for c in set(range(len(candidates))) - set(run):
                    kl_sum[c] += sum(memo[(keys[c], r)] for r in row_list)
                if not run:
                    continue
            sub = [keys[c] for c in run]
            ids = ts.tokens[rows]
            t_lp, t_idx, t_tail = teacher.rows(rows)
            kw = self.runner.layer_kwargs(ids)

            def on_output(  # noqa: ANN202
                h: torch.Tensor,
                cands: list[int],
                ids=ids,  # noqa: ANN001
                rows=(t_lp, t_idx, t_tail),  # noqa: ANN001
                run=run,  # noqa: ANN001
                sub=sub,  # noqa: ANN001
                row_list=row_list,  # noqa: ANN001
            ) -> None:
                z = self.runner.logits(h)
                kl_rows = kl_topk(z, *rows).sum(-1).double().cpu().numpy()
                kl = float(kl_rows.sum())
                nll = float(nll_next(z, ids).sum()) if with_nll else 0.0
                for c in cands:
                    kl_sum[run[c]] += kl
                    nll_sum[run[c]] += nll
                    if memo is not None:
                        for r, v in zip(row_list, kl_rows):
                            memo[(sub[c], r)] = float(v)

            chunk_key = (which, tuple(row_list))
            anchors = [(a_keys, st) for a_keys, st in self.store.anchors(chunk_key)] if use_store else []
            recorded = self.runner.run_shared(
                ids,
                sub,
                self._layer_fn(kw),
                on_output,
                anchors=anchors,
                record=set(range(len(sub))) if use_store else None,
            )
            for c, states in recorded.items():
                self.store.put(sub[c], chunk_key, states)
            self.n_forward_tokens += ids.numel() * len(set(sub))
        kl_mean = kl_sum / max(1, n_kl)
        nll_mean = nll_sum / max(1, n_nll) if with_nll else np.full(len(candidates), np.nan)
        return kl_mean, nll_mean

    def evaluate_many(self, requests: Sequence[Request]) -> list[float]:
        """Values of a batch; requests sharing ``(fidelity, sample)`` are run together (see module docstring)."""
        out: list[float] = [math.nan] * len(requests)
        groups: dict[tuple[int, int | None], list[int]] = {}
        for k, r in enumerate(requests):
            lv = self.space.validate(r.levels)
            if not self.space.is_feasible(lv):
                raise ValueError("the assignment does not meet the dropping budget")
            fid = self.calibration.n_tokens if r.fidelity is None else int(r.fidelity)
            groups.setdefault((fid, r.sample), []).append(k)
        for (fid, sample), members in groups.items():
            seqs = self.calibration.batch(fid, sample)
            full = seqs.size == self.calibration.n_seq
            todo: list[int] = []
            for k in members:
                key = np.asarray(requests[k].levels, dtype=np.int64).tobytes()
                if full and key in self._memo:
                    out[k] = self._memo[key]
                    self.store.touch(tuple(self.layer_keys(requests[k].levels)))
                else:
                    todo.append(k)
            if not todo:
                continue
            uniq: dict[bytes, np.ndarray] = {}
            for k in todo:
                lv = np.asarray(requests[k].levels, dtype=np.int64)
                uniq.setdefault(lv.tobytes(), lv)
            if full:
                # a remembered candidate (the EvoPress parent) whose layer states are not stored is run
                # once more alongside, so that from now on its offspring start from its states
                for k in members:
                    lv = np.asarray(requests[k].levels, dtype=np.int64)
                    stateless = not self.store.has(tuple(self.layer_keys(lv)))
                    if k not in todo and stateless and len(uniq) < self.store.max_variants:
                        uniq.setdefault(lv.tobytes(), lv)
            kl, _ = self.score(list(uniq.values()), "calibration", seqs, record=full)
            values = dict(zip(uniq.keys(), kl.tolist()))
            for k in todo:
                key = np.asarray(requests[k].levels, dtype=np.int64).tobytes()
                out[k] = values[key]
                if full:
                    self._memo[key] = values[key]
        return out

    def remember(self, levels: np.ndarray, value: float) -> None:
        """Record the full-pool value of ``levels`` (e.g. read back from a results cache)."""
        self._memo[np.asarray(levels, dtype=np.int64).tobytes()] = float(value)

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

    def unit_errors(self) -> np.ndarray:
        """Per-unit, per-level error estimates (:meth:`levelsearch.Problem.unit_errors`).

        Level 0 (kept) is 0; level 1 is the KL of dropping the unit alone on one calibration
        sequence (``seq_len`` tokens, sample seed 0: what the ``single-kl`` heuristic measures). The forward
        tokens spent are counted in :attr:`n_forward_tokens` like any evaluation's.
        """
        if self._unit_errors is None:
            kl = self.single_drop_kl(self.calibration.seq_len, 0)
            self._unit_errors = np.stack([np.zeros_like(kl), kl], axis=1)
        return self._unit_errors

    def heldout_report(self, candidates: Sequence[np.ndarray]) -> list[dict[str, float]]:
        """Held-out perplexity and KL to the dense model for each candidate (one shared pass).

        The dense model (no unit dropped) is not run again: its perplexity comes from the
        held-out teacher's pass and its KL to itself is 0.
        """
        teacher = self.teacher("heldout")  # its dense pass also gives the dense perplexity
        todo = [i for i, c in enumerate(candidates) if np.any(np.asarray(c))]
        kl, nll = (np.zeros(0), np.zeros(0))
        if todo:
            kl, nll = self.score([candidates[i] for i in todo], "heldout", with_nll=True)
        out = [{"heldout_ppl": float(math.exp(teacher.nll)), "heldout_kl": 0.0} for _ in candidates]
        for i, k, n in zip(todo, kl, nll):
            out[i] = {"heldout_ppl": float(math.exp(n)), "heldout_kl": float(k)}
        return out
