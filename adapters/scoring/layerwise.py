"""What every layer-wise KL problem on a causal LM shares, whatever its codec.

A :class:`LayerwiseProblem` holds a model and its :class:`~levelsearch.adapters.model.models.LayerMap`,
the calibration pool and the disjoint held-out set, the content fingerprint of both (part of
``describe()``, so of every cache tag and journal), the :class:`~levelsearch.adapters.scoring.fitness.LayerRunner`
and the dense model's top-``k`` teachers. A subclass says how one decoder layer runs under a
candidate (:meth:`LayerwiseProblem._layer_fn`, keyed per layer), what a candidate's per-layer keys
are (:meth:`LayerwiseProblem.candidate_keys`) and which keys are the dense model
(:meth:`LayerwiseProblem.dense_keys`). Everything else is here, once, for every codec:

- the fitness: KL(dense ‖ compressed) per token on ``fidelity`` tokens of the search pool drawn by
  the ``sample`` seed (:meth:`~LayerwiseProblem.score`, :meth:`~LayerwiseProblem.evaluate_many`, which
  :meth:`levelsearch.Problem.evaluate` also serves). Work is shared: the candidates of a batch run as a
  prefix tree over layers; a candidate's full-pool value is remembered (``_memo``: an EvoPress parent
  re-evaluated costs nothing); per-sequence KL sums are remembered (``_seq_kl``: a survivor of a
  selection step pays only for its new sequences); and on the full pool the layer states of the last
  evaluated candidates are kept (``store``, ``anchor_variants`` of them) so the next ones start from
  their longest common prefix. ``n_forward_tokens`` counts the tokens that went through at least one
  layer, per distinct candidate, the dense teachers' passes included (for benchmarks; float64 sums throughout);
- the held-out report (perplexity and the KL statistics of each candidate in one shared pass: mean,
  median, 99th and 99.9th percentile of the per-token KL and top-1 agreement; the dense model's
  perplexity comes from its teacher's pass), the per-unit error estimates for dp and the optimizer
  (:meth:`~LayerwiseProblem.unit_errors`, measured once), the export's check and the identity hash.
"""

from __future__ import annotations

import abc
import hashlib
import inspect
import json
import math
from collections.abc import Callable, Hashable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from levelsearch import Problem, Request

from ..model.data import TokenSet, calibration_and_heldout
from ..model.models import LayerMap, load_model, map_layers
from ..model.units import unit_weight
from .fitness import ActivationStore, LayerRunner, Teacher, kl_statistics, kl_topk, nll_next, same_top

__all__ = ["LayerwiseProblem"]

LayerFn = Callable[[int, torch.Tensor, Any], torch.Tensor]


class LayerwiseProblem(Problem, abc.ABC):
    """Base class of the ``llm-*`` problems (see the module docstring); not a problem by itself."""

    uses_fidelity = True

    #: methods whose keyword-only parameters a subclass's ``**options`` passes on: together with the
    #: subclass's own parameters they make its signature (``help()``, and the parameter check of
    #: :func:`levelsearch.make_problem`), so the shared options are declared, with their defaults, once
    _option_sources: ClassVar[tuple[str, ...]] = ("_setup_model_and_data",)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return
        sig = inspect.signature(init)
        own = list(sig.parameters.values())[1:]  # without self
        if not own or own[-1].kind is not inspect.Parameter.VAR_KEYWORD:
            return
        params, names = own[:-1], {p.name for p in own}
        for source in cls._option_sources:
            for p in inspect.signature(getattr(cls, source)).parameters.values():
                if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in names:
                    params.append(p)
                    names.add(p.name)
        cls.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]

    def _setup_model_and_data(
        self,
        model: str,
        *,
        data: str | None = None,
        seq_len: int = 256,
        calibration_tokens: int = 8192,
        heldout_tokens: int = 4096,
        top_k: int = 256,
        chunk_tokens: int = 1024,
        device: str | None = None,
        dtype: str | None = None,
        threads: int | None = None,
        seed: int = 0,
        loaded: tuple[Any, Any] | None = None,
        anchor_variants: int = 2,
    ) -> None:
        """Load the model and map its layers; the calibration pool, the held-out set, their fingerprint, the runner.

        Args:
            model: ``"smollm2"`` (offline default), a model directory, GGUF file or hub id; with
                ``loaded`` only its name (in :meth:`describe`).
            data: documents for the calibration and held-out sets (default: ``pydoc_data.topics``).
            seq_len: tokens per sequence (default 256).
            calibration_tokens: size of the calibration pool, tokens (default 8,192).
            heldout_tokens: size of the held-out set, tokens (default 4,096).
            top_k: teacher tokens kept per position (default 256; ``6k + 4`` bytes per token).
            chunk_tokens: tokens per forward chunk (default 1,024).
            device, dtype: see :func:`~levelsearch.adapters.model.models.load_model`.
            threads: torch CPU threads (default: leave torch's setting).
            seed: seed of the calibration / held-out document split (default 0).
            loaded: an already loaded ``(model, tokenizer)`` pair (tests, notebooks).
            anchor_variants: full-pool layer states kept for reuse (default 2; each takes
                ``(layers + 1) · search tokens · hidden · 4`` bytes).
        """
        if threads is not None:
            if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
                raise ValueError(f"threads must be a positive integer (torch CPU threads), got {threads!r}")
            torch.set_num_threads(threads)
        self.model_name = str(model)
        self.model: Any
        self.tokenizer: Any
        self.model, self.tokenizer = loaded if loaded is not None else load_model(model, device=device, dtype=dtype)
        self.map: LayerMap = map_layers(self.model)
        vocab = int(unit_weight(self.map.head).shape[0])
        if int(top_k) > vocab:
            raise ValueError(
                f"top_k {int(top_k)} is larger than the model's vocabulary ({vocab} tokens); give --top-k {vocab} "
                "or less"
            )
        self.settings: dict[str, Any] = {
            "data": data,
            "seq_len": int(seq_len),
            "calibration_tokens": int(calibration_tokens),
            "heldout_tokens": int(heldout_tokens),
            "top_k": int(top_k),
            "seed": int(seed),
        }
        self.calibration, self.heldout = calibration_and_heldout(
            self.tokenizer,
            data,
            seq_len=seq_len,
            calibration_tokens=calibration_tokens,
            heldout_tokens=heldout_tokens,
            seed=seed,
        )
        from ..model.integrity import content_fingerprint, weights_fingerprint

        # every byte of the weights, and the token sets: part of describe(), so of every cache tag and journal
        self.weights_sha256 = weights_fingerprint(self.model)
        self.content = content_fingerprint(self.model, self.calibration, self.heldout, weights=self.weights_sha256)
        self.top_k = int(top_k)
        self.runner = LayerRunner(self.model, self.map, chunk_tokens=chunk_tokens)
        self._teachers: dict[str, Teacher] = {}
        # what the fitness draws from (a weight problem may take a prefix of the pool) and remembers
        self.search_pool: TokenSet = self.calibration
        self.max_fidelity = self.calibration.n_tokens
        self.store = ActivationStore(anchor_variants)
        self._memo: dict[bytes, float] = {}  # levels -> full-pool KL
        self._seq_kl: dict[tuple[Any, int], float] = {}  # (layer keys, sequence) -> KL summed over its tokens
        self._heldout: dict[tuple[Any, ...], dict[str, float]] = {}  # layer keys -> held-out report entry
        self._other_sets: dict[str, TokenSet] = {}  # a token set measured once (chunk_statistics)
        self._unit_errors: np.ndarray | None = None
        self.n_forward_tokens = 0  # tokens that went through at least one layer, per distinct candidate

    # ------------------------------------------------------------------ what a subclass says
    @abc.abstractmethod
    def _layer_fn(self, kwargs: list[dict[str, Any]]) -> LayerFn:
        """``fn(layer, h, key) -> h``: decoder layer ``layer`` run on ``h`` as the per-layer ``key`` says."""

    @abc.abstractmethod
    def dense_keys(self) -> Sequence[Hashable]:
        """The per-layer keys of the uncompressed model."""

    @abc.abstractmethod
    def candidate_keys(self, candidate: Any) -> tuple[Hashable, ...]:
        """The per-layer keys of a candidate (a level array, or :meth:`dense_candidate`)."""

    @abc.abstractmethod
    def _measure_unit_errors(self) -> np.ndarray:
        """Per-unit, per-level error estimates (see :meth:`unit_errors`), measured once."""

    @abc.abstractmethod
    def apply(self, levels: np.ndarray | None) -> None:
        """Put the live model at ``levels`` (``None``: the uncompressed model), e.g. to export or inspect it."""

    @abc.abstractmethod
    def dense_candidate(self) -> Any:
        """The candidate that stands for the uncompressed model in ``score`` and ``heldout_report``."""

    def token_set(self, which: str) -> TokenSet:
        """The tokens of ``"calibration"`` (the search pool fitness draws from), ``"heldout"``, or another set
        being measured (:meth:`chunk_statistics`)."""
        if which in getattr(self, "_other_sets", {}):
            return self._other_sets[which]
        return self.search_pool if which == "calibration" else self.heldout

    # ------------------------------------------------------------------ shared
    def teacher(self, which: str = "calibration") -> Teacher:
        """The dense teacher over the calibration pool or the held-out set (computed once)."""
        if which not in self._teachers:
            ts = self.token_set(which)
            dense = self.dense_keys()

            def logits_fn(ids: torch.Tensor) -> torch.Tensor:
                out: list[torch.Tensor] = []
                kw = self.runner.layer_kwargs(ids)
                self.runner.run_shared(ids, [dense], self._layer_fn(kw), lambda h, c: out.append(self.runner.logits(h)))
                return out[0]

            per = max(1, self.runner.chunk_tokens // ts.seq_len)
            self._teachers[which] = Teacher.from_logits_fn(ts.tokens, logits_fn, self.top_k, per)
            self.n_forward_tokens += int(ts.tokens.numel())  # the dense model's pass is a forward too
        return self._teachers[which]

    def use_teacher(self, which: str, teacher: Teacher) -> None:
        """Take ``teacher`` (e.g. read back from a cache checked against :meth:`identity_hash`) for ``which``."""
        self._teachers[which] = teacher

    def has_teacher(self, which: str) -> bool:
        """Whether the teacher of ``which`` is already computed or given."""
        return which in self._teachers

    # ------------------------------------------------------------------ fitness
    def score(
        self,
        candidates: Sequence[Any],
        which: str = "calibration",
        seqs: np.ndarray | None = None,
        *,
        with_nll: bool = False,
        record: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Mean KL per token to the dense model (and mean next-token NLL when ``with_nll``) of each candidate.

        A candidate is a level array (feasible or not, e.g. single-unit changes) or :meth:`dense_candidate`.
        ``seqs`` selects sequences of the set (default: all); ``record`` keeps the candidates' full-pool
        layer states as anchors (when they are few). Returns ``(kl[c], nll[c])`` (nll is NaN unless asked).
        """
        return self._score_sums(candidates, which, seqs, with_nll=with_nll, record=record).means(with_nll)

    def _score_sums(
        self,
        candidates: Sequence[Any],
        which: str,
        seqs: np.ndarray | None,
        *,
        with_nll: bool = False,
        record: bool = False,
        per_token: bool = False,
    ) -> _Sums:
        """:meth:`score`'s sums; with ``per_token`` (no memo then) also each position's KL and same-top flag."""
        ts = self.token_set(which)
        seqs = np.arange(ts.n_seq) if seqs is None else np.asarray(seqs)
        keys = [self.candidate_keys(c) for c in candidates]
        sums = _Sums(len(candidates), ts.seq_len, per_token=per_token)
        # per-sequence KL sums of calibration candidates are remembered: a candidate evaluated
        # again on overlapping sequences (a survivor of a selection step) runs only the new ones
        memo = self._seq_kl if which == "calibration" and not with_nll and not per_token else None
        # keep full-pool states only for a few candidates (memory: see ``anchor_variants``)
        use_store = record and seqs.size == ts.n_seq and len(set(keys)) <= self.store.max_variants
        if memo is not None and not use_store:
            seqs = _take_known_rows(memo, keys, seqs, sums)
        per = max(1, self.runner.chunk_tokens // ts.seq_len)
        for s in range(0, seqs.size, per):
            self._score_chunk(which, seqs[s : s + per], keys, sums, memo, use_store, with_nll)
        return sums

    def _score_chunk(
        self,
        which: str,
        chunk: np.ndarray,
        keys: list[tuple[Hashable, ...]],
        sums: _Sums,
        memo: dict[tuple[Any, int], float] | None,
        use_store: bool,
        with_nll: bool,
    ) -> None:
        """Add one chunk of sequences to ``sums``: remembered sequences from ``memo``, the rest run as a prefix tree."""
        rows = torch.as_tensor(chunk)
        row_list = rows.tolist()
        sums.add_rows(len(row_list))
        run = list(range(len(keys)))
        if memo is not None:
            stateless = [use_store and not self.store.has(k) for k in keys]
            run = [c for c in run if any((keys[c], r) not in memo for r in row_list) or stateless[c]]
            for c in set(range(len(keys))) - set(run):
                sums.kl[c] += sum(memo[(keys[c], r)] for r in row_list)
            if not run:
                return
        sub = [keys[c] for c in run]
        ids = self.token_set(which).tokens[rows]
        t_rows = self.teacher(which).rows(rows)

        def on_output(h: torch.Tensor, cands: list[int]) -> None:
            z = self.runner.logits(h)
            kl_tok = kl_topk(z, *t_rows)
            kl_rows = kl_tok.sum(-1).double().cpu().numpy()
            kl = float(kl_rows.sum())
            nll = float(nll_next(z, ids).sum()) if with_nll else 0.0
            if sums.tokens is not None:
                tok = (kl_tok.double().cpu().numpy(), same_top(z, t_rows[1]).cpu().numpy())
            for c in cands:
                sums.kl[run[c]] += kl
                sums.nll[run[c]] += nll
                if sums.tokens is not None:
                    sums.tokens[run[c]].append(tok)
                if memo is not None:
                    for r, v in zip(row_list, kl_rows):
                        memo[(sub[c], r)] = float(v)

        chunk_key = (which, tuple(row_list))
        anchors = list(self.store.anchors(chunk_key)) if use_store else []
        fn = self._layer_fn(self.runner.layer_kwargs(ids))
        record = set(range(len(sub))) if use_store else None
        recorded = self.runner.run_shared(ids, sub, fn, on_output, anchors=anchors, record=record)
        for c, states in recorded.items():
            self.store.put(sub[c], chunk_key, states)
        self.n_forward_tokens += ids.numel() * len(set(sub))

    def evaluate_many(self, requests: Sequence[Request]) -> list[float]:
        """KL of a batch; requests sharing ``(fidelity, sample)`` run together (see the module docstring)."""
        out: list[float] = [math.nan] * len(requests)
        groups: dict[tuple[int, int | None], list[int]] = {}
        top = self.search_pool.n_tokens
        for k, r in enumerate(requests):
            if not self.space.is_feasible(self.space.validate(r.levels)):
                raise ValueError("the assignment does not meet the budget")
            fid = top if r.fidelity is None else min(int(r.fidelity), top)
            groups.setdefault((fid, r.sample), []).append(k)
        for (fid, sample), members in groups.items():
            levels = {k: np.asarray(requests[k].levels, dtype=np.int64) for k in members}
            out_group = self._evaluate_group(self.search_pool.batch(fid, sample), levels)
            for k, v in out_group.items():
                out[k] = v
        return out

    def _evaluate_group(self, seqs: np.ndarray, levels: dict[int, np.ndarray]) -> dict[int, float]:
        """Values of the requests ``levels`` (request index → levels) on the sequences ``seqs``."""
        full = seqs.size == self.search_pool.n_seq
        out: dict[int, float] = {}
        uniq: dict[bytes, np.ndarray] = {}
        for k, lv in levels.items():
            if full and lv.tobytes() in self._memo:
                out[k] = self._memo[lv.tobytes()]
                self.store.touch(self.candidate_keys(lv))
            else:
                uniq.setdefault(lv.tobytes(), lv)
        if not uniq:
            return out
        if full:
            # a remembered candidate (the EvoPress parent) whose layer states are not stored is run
            # once more alongside, so that from now on its offspring start from its states
            for k, lv in levels.items():
                if k in out and not self.store.has(self.candidate_keys(lv)) and len(uniq) < self.store.max_variants:
                    uniq.setdefault(lv.tobytes(), lv)
        kl, _ = self.score(list(uniq.values()), "calibration", seqs, record=full)
        values = dict(zip(uniq.keys(), kl.tolist()))
        for k, lv in levels.items():
            if k not in out:
                out[k] = values[lv.tobytes()]
                if full:
                    self._memo[lv.tobytes()] = values[lv.tobytes()]
        return out

    def remember(self, levels: np.ndarray, value: float) -> None:
        """Record the full-pool value of ``levels`` (e.g. read back from a results cache)."""
        self._memo[np.asarray(levels, dtype=np.int64).tobytes()] = float(value)

    def cost_of(self, fidelity: int | None) -> float:
        top = self.search_pool.n_tokens
        return float(top if fidelity is None else min(int(fidelity), top))

    # ------------------------------------------------------------------ reports
    def heldout_report(self, candidates: Sequence[Any]) -> list[dict[str, float]]:
        """Held-out perplexity and KL statistics against the dense model of each candidate (one shared pass).

        Each entry has ``heldout_ppl`` (``exp`` of the mean next-token NLL), ``heldout_kl`` (the mean per-token
        KL, the search's measure), ``heldout_kl_median``, ``heldout_kl_p99``, ``heldout_kl_p99_9`` (percentiles of
        the per-token KL) and ``heldout_top1`` (the fraction of positions whose likeliest next token is the dense
        model's), over every position of the held-out set; the per-token KL is
        :func:`~levelsearch.adapters.scoring.fitness.kl_topk`'s (the teacher's top-``k`` tokens plus one tail bin).
        A candidate that is the dense model is not run again: its perplexity comes from the held-out
        teacher's pass, its KL statistics are 0 and its top-1 agreement 1. A candidate measured before (the same
        per-layer keys: a baseline met again at another target of a curve, which shares this memory) is not
        run again either.
        """
        teacher = self.teacher("heldout")  # its dense pass also gives the dense perplexity
        dense = tuple(self.dense_keys())
        known = not math.isnan(teacher.nll)
        keys = [tuple(self.candidate_keys(c)) for c in candidates]
        stats = kl_statistics([0.0], [True])
        out = [{"heldout_ppl": float(math.exp(teacher.nll)), **_prefixed(stats)} for _ in candidates]
        todo: dict[tuple[Any, ...], list[int]] = {}  # each distinct candidate not yet measured, run once
        for i, k in enumerate(keys):
            if k in self._heldout:
                out[i] = dict(self._heldout[k])
            elif not (known and k == dense):
                todo.setdefault(k, []).append(i)
        if todo:
            firsts = [candidates[ii[0]] for ii in todo.values()]
            sums = self._score_sums(firsts, "heldout", None, with_nll=True, per_token=True)
            kl, nll = sums.means(True)
            for j, (k, ii) in enumerate(todo.items()):
                stats = {**sums.statistics(j), "kl": float(kl[j])}  # the mean as the search sums it
                self._heldout[k] = {"heldout_ppl": float(math.exp(nll[j])), **_prefixed(stats)}
                for i in ii:
                    out[i] = dict(self._heldout[k])
        return out

    def chunk_statistics(self, candidate: Any, tokens: Any, first: int = 0) -> dict[str, float]:
        """The held-out KL statistics of ``candidate`` (as :meth:`heldout_report` computes them: the dense model's
        top-``k`` teacher plus one tail bin) on other token sequences ``tokens`` (``[n_seq, seq_len]``), over the
        positions ``first .. seq_len-2`` of each: e.g. llama-perplexity's chunks, whose second half it scores
        (``first = seq_len // 2``), to set our figures beside its ``--kl-divergence`` ones on the same tokens.

        Returns ``kl`` (the mean), ``kl_median``, ``kl_p99``, ``kl_p99_9``, ``top1`` and ``positions``. The dense
        pass and the candidate's count in :attr:`n_forward_tokens`; nothing is remembered.
        """
        ids = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
        if ids.ndim != 2 or not 0 <= int(first) < ids.shape[1] - 1:
            raise ValueError(
                f"give tokens [n_seq, seq_len] and 0 <= first < seq_len - 1, got {tuple(ids.shape)}, {first}"
            )
        which = "chunks"
        self._other_sets = {which: TokenSet(tokens=ids, name="chunks")}
        try:
            kl, top = self._score_sums([candidate], which, None, per_token=True).token_arrays(0)
        finally:
            self._other_sets = {}
            self._teachers.pop(which, None)
        kl, top = kl[:, int(first) : -1], top[:, int(first) : -1]
        return {**kl_statistics(kl, top), "positions": int(kl.size)}

    def sequence_kls(self, candidates: Sequence[Any]) -> np.ndarray:
        """Per candidate, the mean KL per token of each sequence of the calibration pool (``[c, n_seq]``): what
        :meth:`score` averages over the whole pool. Sequences the search already ran are remembered, not run."""
        n = self.search_pool.n_seq
        out = np.empty((len(candidates), n))
        for i in range(n):
            out[:, i] = self.score(candidates, "calibration", np.array([i]))[0]
        return out

    def heldout_tokens(self, candidates: Sequence[Any]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per candidate, the per-token KL to the dense model (``[n_seq, seq_len]``, nats, as
        :func:`~levelsearch.adapters.scoring.fitness.kl_topk`) and whether each position's likeliest token is
        the dense model's (``[n_seq, seq_len]`` bool), over the held-out set in its order: what
        :meth:`heldout_report` summarises with :func:`~levelsearch.adapters.scoring.fitness.kl_statistics`,
        for comparisons with other tools' figures."""
        sums = self._score_sums(list(candidates), "heldout", None, per_token=True)
        return [sums.token_arrays(c) for c in range(len(candidates))]

    #: the paper's schedule (a name in :data:`levelsearch.PRESETS`) this kind runs on a GPU when the pool holds it
    gpu_preset: ClassVar[str | None] = None

    def default_schedule(self, optimizer: str = "evopress") -> dict[str, Any]:
        """The selection schedule of :meth:`levelsearch.Problem.default_schedule`, sized to the calibration
        pool and the device: on a GPU whose pool holds :attr:`gpu_preset`'s tokens, that preset; else
        (CPU, or a small pool) :func:`~levelsearch.fidelity_schedule` screening on one sequence, confirming
        on four and deciding on the whole pool (``evopress``: never retrying a loser there, since the
        whole pool's values are exact)."""
        from levelsearch.evopress import PRESETS
        from levelsearch.problem import fidelity_schedule

        pool = int(self.search_pool.n_tokens)
        preset = PRESETS.get(self.gpu_preset or "")
        if preset and str(self.runner.device).startswith("cuda"):
            asked = [int(f) for f, _ in preset["steps"] if f is not None] + [int(preset.get("init_fidelity") or 0)]
            if max(asked) <= pool:  # its schedule, not its start: the problem's prior gives a better one
                return {k: v for k, v in preset.items() if k != "start"}
        opts = fidelity_schedule(pool, optimizer, first=self.calibration.seq_len)
        if optimizer == "evopress":
            opts["no_repeats"] = True
        return opts

    def unit_errors(self) -> np.ndarray:
        """Per-unit, per-level error estimates (:meth:`levelsearch.Problem.unit_errors`), measured once:
        what the codec's problem says (single-drop KLs for dropping, normalised output errors of the
        variants for weight codecs). Forward tokens spent measuring them count in :attr:`n_forward_tokens`."""
        if self._unit_errors is None:
            self._unit_errors = self._measure_unit_errors()
        return self._unit_errors

    # ------------------------------------------------------------------ export
    @torch.inference_mode()
    def verify_export(self, levels: np.ndarray, out: Any, n_seq: int = 2) -> float:
        """Largest absolute logit difference, on ``n_seq`` held-out sequences, between the exported directory
        ``out`` (loaded with the stock ``AutoModelForCausalLM``) and this model at ``levels``; the live model
        is left uncompressed."""
        from transformers import AutoModelForCausalLM

        dtype = next(self.model.parameters()).dtype
        loaded: Any = AutoModelForCausalLM.from_pretrained(str(out), dtype=dtype)
        return self.logit_diff(levels, loaded, n_seq)

    @torch.inference_mode()
    def logit_diff(self, levels: np.ndarray, loaded: Any, n_seq: int = 2) -> float:
        """Largest absolute logit difference, on ``n_seq`` held-out sequences, between a reloaded model
        ``loaded`` and this model at ``levels``; the live model is left uncompressed."""
        loaded = loaded.to(self.runner.device).eval()
        ids = self.heldout.tokens[:n_seq].to(self.runner.device)
        self.apply(self.space.validate(levels))
        try:
            ref = self.model(input_ids=ids, use_cache=False).logits.float()
        finally:
            self.apply(None)
        got = loaded(input_ids=ids, use_cache=False).logits.float()
        return float((ref - got).abs().max())

    def identity_hash(self) -> str:
        """A short hash of :meth:`describe` (names cache files that belong to this exact problem)."""
        return hashlib.sha256(json.dumps(self.describe(), sort_keys=True).encode()).hexdigest()[:16]


def _prefixed(stats: dict[str, float]) -> dict[str, float]:
    return {f"heldout_{k}": v for k, v in stats.items()}


class _Sums:
    """Per-candidate KL and NLL sums (float64) and the token counts they are divided by; with ``per_token``,
    also each chunk's per-position KL and same-top flags, per candidate, in the order the chunks ran."""

    def __init__(self, n: int, seq_len: int, *, per_token: bool = False) -> None:
        self.kl = np.zeros(n)
        self.nll = np.zeros(n)
        self.seq_len = seq_len
        self.n_kl = self.n_nll = 0
        self.tokens: list[list[tuple[np.ndarray, np.ndarray]]] | None = [[] for _ in range(n)] if per_token else None

    def token_arrays(self, c: int) -> tuple[np.ndarray, np.ndarray]:
        """Candidate ``c``'s per-position KL and same-top flags, ``[rows, seq_len]`` each."""
        assert self.tokens is not None
        parts = self.tokens[c]
        if not parts:
            return np.zeros((0, self.seq_len)), np.zeros((0, self.seq_len), dtype=bool)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def statistics(self, c: int) -> dict[str, float]:
        return kl_statistics(*self.token_arrays(c))

    def add_rows(self, n_rows: int) -> None:
        self.n_kl += n_rows * self.seq_len
        self.n_nll += n_rows * (self.seq_len - 1)

    def means(self, with_nll: bool) -> tuple[np.ndarray, np.ndarray]:
        nll = self.nll / max(1, self.n_nll) if with_nll else np.full(self.kl.size, np.nan)
        return self.kl / max(1, self.n_kl), nll


def _take_known_rows(
    memo: dict[tuple[Any, int], float], keys: list[tuple[Hashable, ...]], seqs: np.ndarray, sums: _Sums
) -> np.ndarray:
    """Add the sequences every candidate already knows (from ``memo``) to ``sums``; return the others.

    So the others are chunked alone, and a survivor of a nested minibatch pays just for its new sequences.
    """
    known = [r for r in seqs.tolist() if all((k, r) in memo for k in keys)]
    for r in known:
        for c, k in enumerate(keys):
            sums.kl[c] += memo[(k, r)]
    sums.add_rows(len(known))
    return np.setdiff1d(seqs, np.asarray(known, dtype=seqs.dtype))
