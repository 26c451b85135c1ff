"""The common part of the sparsity and quantization problems: weights swapped in from a variant database.

A :class:`WeightLevelProblem` holds a model, a calibration pool and a held-out set
(as the dropping adapter), a :class:`~levelsearch.adapters.database.VariantDatabase`
(built on first use, then reused), and the dense model's top-``k`` teacher on both
sets (computed once, before any weight is swapped). The fitness of an assignment is
KL(dense ‖ compressed) per token on ``fidelity`` calibration tokens.

Batches share work: candidates are run as a prefix tree over decoder layers (a
candidate equal to another on layers ``< j`` reuses their activations), and only
units whose level changed are loaded from the memory-mapped database.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from levelsearch import Request, solve_additive

from .data import TokenSet
from .database import VariantDatabase, build_database, default_database_dir
from .fitness import kl_topk, nll_next
from .layerwise import LayerwiseProblem
from .models import DEFAULT_MODEL, save_model

__all__ = ["WeightLevelProblem", "DENSE", "dp_levels", "random_levels", "export_levels", "verify_levels_export"]

DENSE = None  # a candidate standing for the uncompressed model in :meth:`WeightLevelProblem.score`


class WeightLevelProblem(LayerwiseProblem):
    """Base class; subclasses give the database spec and build the level space.

    Subclasses take ``**options`` and pass them to :meth:`_setup`: ``database``, ``progress``,
    ``search_tokens`` and the model and data settings of
    :meth:`~levelsearch.adapters.layerwise.LayerwiseProblem._setup_model_and_data` (their
    signature lists them all).
    """

    _option_sources = ("_setup", "_setup_model_and_data")

    def _setup(
        self,
        make_spec: Callable[[Any], dict[str, Any]],
        model: str,
        *,
        database: str | None = None,
        progress: bool = True,
        search_tokens: int | None = None,
        **options: Any,
    ) -> None:
        """Load the model and data, then ``make_spec(model module)`` (checks a subclass's settings before
        anything slow) and open or build the variant database of that spec.

        Args:
            database: database directory (default: under the model cache, keyed by spec and data).
            progress: progress bars while building the database (default on).
            search_tokens: fitness uses only the first ``search_tokens`` tokens of the calibration
                pool (default: all); the database's Hessians always use the whole pool.
            options: the model and data: see
                :meth:`~levelsearch.adapters.layerwise.LayerwiseProblem._setup_model_and_data`.
        """
        self._setup_model_and_data(model or DEFAULT_MODEL, **options)
        spec = make_spec(self.model)
        from .integrity import tokens_fingerprint

        self.settings["content"] = self.content  # subclasses' describe() spreads the settings
        # fitness draws from the first ``search_tokens`` tokens of the pool; the Hessians use all of it
        self.search_pool = self.calibration
        if search_tokens is not None and int(search_tokens) < self.calibration.n_tokens:
            n = self.calibration.n_sequences_for(int(search_tokens))
            self.search_pool = TokenSet(self.calibration.tokens[:n], "calibration")
        self.max_fidelity = self.search_pool.n_tokens
        calib = {
            "source": self.settings["data"] or "pydoc_data.topics",
            "tokens": self.calibration.n_tokens,
            "seq_len": self.calibration.seq_len,
            "split_seed": int(self.settings["seed"]),
            "content": tokens_fingerprint(self.calibration)[:20],  # the Hessians' tokens, not a path
        }
        root = database or default_database_dir(self.model_name, spec, calib)
        self.db: VariantDatabase = build_database(
            root,
            self.model,
            self.calibration.tokens,
            spec,
            model_id=self.model_name,
            calibration=calib,
            seed=int(self.settings["seed"]),
            progress=progress,
        )
        self.spec = spec
        self.unit_names = self.db.unit_names
        named = dict(self.model.named_modules())
        self.modules = [named[u] for u in self.unit_names]
        self.unit_layer = np.array([self.db.manifest["units"][u]["layer"] for u in self.unit_names])
        self.layer_units = [np.flatnonzero(self.unit_layer == i) for i in range(self.map.n_layers)]
        self.numel = np.array([m.weight.numel() for m in self.modules], dtype=np.int64)
        self._dense = [m.weight.detach().to("cpu", copy=True) for m in self.modules]
        self._dense_now = np.ones(len(self.modules), dtype=bool)
        for which in ("calibration", "heldout"):
            self.teacher(which)  # on the dense weights, before anything is swapped in
        self._memo: dict[bytes, float] = {}
        self._seq_kl: dict[tuple[Any, int], float] = {}  # (layer keys, sequence) -> KL summed over its tokens
        self.n_forward_tokens = 0  # tokens that went through at least one layer (for benchmarks)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model_name,
            "spec": self.spec,
            **self._describe_extra(),
            **self.settings,
            "space": self.space.to_dict(),
        }

    def _describe_extra(self) -> dict[str, Any]:
        """What a subclass's :meth:`describe` adds to the spec and settings (its budget)."""
        return {}

    # ------------------------------------------------------------------ weights
    def _put(self, unit: int, level: int | None) -> None:
        mod, name = self.modules[unit], self.unit_names[unit]
        if level is None:
            if not self._dense_now[unit]:
                with torch.no_grad():
                    mod.weight.copy_(self._dense[unit].to(mod.weight.device, mod.weight.dtype))
                self.db.forget(name)
                self._dense_now[unit] = True
            return
        self.db.put(mod, name, int(level))
        self._dense_now[unit] = False

    def apply(self, levels: np.ndarray | None) -> None:
        """Put the model's weights at ``levels`` (``None``: the dense weights)."""
        for u in range(len(self.modules)):
            self._put(u, None if levels is None else int(levels[u]))

    def layer_key(self, levels: np.ndarray | None, layer: int) -> tuple[int, ...] | None:
        return None if levels is None else tuple(int(x) for x in np.asarray(levels)[self.layer_units[layer]])

    def _layer_fn(self, kwargs: list[dict[str, Any]]) -> Any:
        def apply(layer: int, h: torch.Tensor, key: Any) -> torch.Tensor:
            for pos, u in enumerate(self.layer_units[layer]):
                self._put(int(u), None if key is None else key[pos])
            return self.runner.run_layer(layer, h, kwargs[layer])

        return apply

    # ------------------------------------------------------------------ fitness
    def dense_keys(self) -> list[None]:
        return [DENSE] * self.map.n_layers

    def dense_candidate(self) -> None:
        """The candidate standing for the uncompressed model in :meth:`score` and :meth:`heldout_report`."""
        return DENSE

    def token_set(self, which: str) -> TokenSet:
        return self.search_pool if which == "calibration" else self.heldout

    def score(
        self,
        candidates: Sequence[np.ndarray | None],
        which: str = "calibration",
        seqs: np.ndarray | None = None,
        *,
        with_nll: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Mean KL per token to the dense model (and mean next-token NLL if ``with_nll``) of each candidate.

        A candidate is a level array or ``None`` (dense). ``seqs`` picks sequences of the set (default all).
        """
        ts: TokenSet = self.search_pool if which == "calibration" else self.heldout
        teacher = self.teacher(which)
        seqs = np.arange(ts.n_seq) if seqs is None else np.asarray(seqs)
        keys = [tuple(self.layer_key(c, i) for i in range(self.map.n_layers)) for c in candidates]
        kl_sum = np.zeros(len(candidates))
        nll_sum = np.zeros(len(candidates))
        n_kl = n_nll = 0
        # per-sequence KL sums of calibration candidates are remembered: a candidate evaluated again
        # on overlapping sequences (a survivor of a selection step) runs only the sequences it lacks
        memo = self._seq_kl if which == "calibration" and not with_nll else None
        per = max(1, self.runner.chunk_tokens // ts.seq_len)
        for s in range(0, seqs.size, per):
            rows = torch.as_tensor(seqs[s : s + per])
            row_list = rows.tolist()
            n_kl += rows.numel() * ts.seq_len
            n_nll += rows.numel() * (ts.seq_len - 1)
            run = list(range(len(candidates)))
            if memo is not None:
                run = [c for c in run if any((keys[c], r) not in memo for r in row_list)]
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

            self.runner.run_shared(ids, sub, self._layer_fn(kw), on_output)
            self.n_forward_tokens += ids.numel() * len(set(sub))
        nll_mean = nll_sum / max(1, n_nll) if with_nll else np.full(len(candidates), np.nan)
        return kl_sum / max(1, n_kl), nll_mean

    def evaluate_many(self, requests: Sequence[Request]) -> list[float]:
        """KL of a batch; requests sharing ``(fidelity, sample)`` run together as one prefix tree."""
        out: list[float] = [math.nan] * len(requests)
        groups: dict[tuple[int, int | None], list[int]] = {}
        top = self.search_pool.n_tokens
        for k, r in enumerate(requests):
            lv = self.space.validate(r.levels)
            if not self.space.is_feasible(lv):
                raise ValueError("the assignment does not meet the budget")
            fid = top if r.fidelity is None else min(int(r.fidelity), top)
            groups.setdefault((fid, r.sample), []).append(k)
        for (fid, sample), members in groups.items():
            seqs = self.search_pool.batch(fid, sample)
            full = seqs.size == self.search_pool.n_seq
            uniq: dict[bytes, np.ndarray] = {}
            for k in members:
                lv = np.asarray(requests[k].levels, dtype=np.int64)
                if not (full and lv.tobytes() in self._memo):
                    uniq.setdefault(lv.tobytes(), lv)
            if uniq:
                kl, _ = self.score(list(uniq.values()), "calibration", seqs)
                values = dict(zip(uniq.keys(), kl.tolist()))
                if full:
                    self._memo.update(values)
            else:
                values = {}
            for k in members:
                key = np.asarray(requests[k].levels, dtype=np.int64).tobytes()
                out[k] = values[key] if key in values else self._memo[key]
        return out

    def cost_of(self, fidelity: int | None) -> float:
        top = self.search_pool.n_tokens
        return float(top if fidelity is None else min(int(fidelity), top))

    # ------------------------------------------------------------------ reports
    def heldout_report(self, candidates: Sequence[np.ndarray | None]) -> list[dict[str, float]]:
        """Held-out perplexity and KL to the dense model of each candidate (``None`` = dense), one pass."""
        kl, nll = self.score(list(candidates), "heldout", with_nll=True)
        return [{"heldout_ppl": float(math.exp(n)), "heldout_kl": float(k)} for k, n in zip(kl, nll)]

    def unit_errors(self) -> np.ndarray:
        """Per-unit, per-level normalised output errors ``tr(ΔW H ΔWᵀ)/tr(W H Wᵀ)`` (the DP baseline's input)."""
        return self.db.errors()


def export_levels(
    problem: WeightLevelProblem, levels: np.ndarray, out: str | Path, info: dict[str, Any] | None = None
) -> Path:
    """Write the model at ``levels`` as a Hugging Face directory that loads with the stock architecture.

    Every unit is written as the dense weight its variant stands for (pruned layers with their
    zeros, quantized ones as the fp32 values the codes stand for). ``levelsearch_compression.json``
    lists each unit's level and what its codec records of it (zeros and sparsity, bits and group
    size ...), how the weights were written, the database spec and ``info``. The model held by
    ``problem`` is left at ``levels``.
    """
    lv = problem.space.validate(levels)
    problem.apply(lv)
    path = save_model(problem.model, problem.tokenizer, out)
    codec = problem.db.codec
    per_unit: dict[str, Any] = {}
    for u, name in enumerate(problem.unit_names):
        value = problem.db.values(name)[int(lv[u])]
        per_unit[name] = {"level": int(lv[u]), **codec.export_entry(problem.spec, value, int(problem.numel[u]))}
    meta = {
        "kind": problem.spec["kind"],
        "spec": problem.spec,
        "units": per_unit,
        "levels": lv.tolist(),
        "how": codec.export_how,
        **(info or {}),
    }
    (path / "levelsearch_compression.json").write_text(json.dumps(meta, indent=1))
    return path


def verify_levels_export(problem: WeightLevelProblem, levels: np.ndarray, out: str | Path, n_seq: int = 2) -> float:
    """:meth:`~levelsearch.adapters.layerwise.LayerwiseProblem.verify_export` (kept for callers of this name)."""
    return problem.verify_export(levels, out, n_seq)


def dp_levels(problem: WeightLevelProblem) -> np.ndarray:
    """Knapsack DP on per-unit normalised output errors, assumed additive."""
    errors = problem.unit_errors()
    return solve_additive(problem.space, np.nan_to_num(errors, nan=np.inf))[0]


def random_levels(problem: WeightLevelProblem, *, n: int = 16, fidelity: int = 2048, seed: int = 0) -> np.ndarray:
    """Best of ``n`` random feasible assignments by KL on ``fidelity`` calibration tokens."""
    rng = np.random.default_rng(seed)
    cands = [problem.space.sample(rng) for _ in range(n)]
    kl, _ = problem.score(cands, "calibration", problem.search_pool.batch(fidelity, seed))
    return cands[int(np.argmin(kl))]
