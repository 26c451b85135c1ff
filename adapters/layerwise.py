"""What every layer-wise KL problem on a causal LM shares, whatever its codec.

A :class:`LayerwiseProblem` holds a model and its :class:`~levelsearch.adapters.models.LayerMap`,
the calibration pool and the disjoint held-out set, the content fingerprint of both (part of
``describe()``, so of every cache tag and journal), the :class:`~levelsearch.adapters.fitness.LayerRunner`
and the dense model's top-``k`` teachers. A subclass says how one decoder layer runs under a
candidate (:meth:`LayerwiseProblem._layer_fn`, keyed per layer) and which key is the dense model
(:meth:`LayerwiseProblem.dense_keys`) and evaluates a batch (``evaluate_many``, which
:meth:`levelsearch.Problem.evaluate` also serves); the teachers and the identity hash come from here.
"""

from __future__ import annotations

import abc
import hashlib
import inspect
import json
from collections.abc import Callable, Hashable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from levelsearch import Problem

from .data import TokenSet, calibration_and_heldout
from .fitness import LayerRunner, Teacher
from .models import LayerMap, load_model, map_layers

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
            device, dtype: see :func:`~levelsearch.adapters.models.load_model`.
            threads: torch CPU threads (default: leave torch's setting).
            seed: seed of the calibration / held-out document split (default 0).
            loaded: an already loaded ``(model, tokenizer)`` pair (tests, notebooks).
        """
        if threads is not None:
            torch.set_num_threads(int(threads))
        self.model_name = str(model)
        self.model: Any
        self.tokenizer: Any
        self.model, self.tokenizer = loaded if loaded is not None else load_model(model, device=device, dtype=dtype)
        self.map: LayerMap = map_layers(self.model)
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
        from .integrity import content_fingerprint

        # the weights' and the token sets' fingerprint: part of describe(), so of every cache tag and journal
        self.content = content_fingerprint(self.model, self.calibration, self.heldout)
        self.top_k = int(top_k)
        self.runner = LayerRunner(self.model, self.map, chunk_tokens=chunk_tokens)
        self._teachers: dict[str, Teacher] = {}

    # ------------------------------------------------------------------ what a subclass says
    @abc.abstractmethod
    def _layer_fn(self, kwargs: list[dict[str, Any]]) -> LayerFn:
        """``fn(layer, h, key) -> h``: decoder layer ``layer`` run on ``h`` as the per-layer ``key`` says."""

    @abc.abstractmethod
    def dense_keys(self) -> Sequence[Hashable]:
        """The per-layer keys of the uncompressed model."""

    @abc.abstractmethod
    def apply(self, levels: np.ndarray | None) -> None:
        """Put the live model at ``levels`` (``None``: the uncompressed model), e.g. to export or inspect it."""

    @abc.abstractmethod
    def dense_candidate(self) -> Any:
        """The candidate that stands for the uncompressed model in ``score`` and ``heldout_report``."""

    def token_set(self, which: str) -> TokenSet:
        """The tokens of ``"calibration"`` (the pool fitness draws from) or ``"heldout"``."""
        return self.calibration if which == "calibration" else self.heldout

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
        return self._teachers[which]

    def use_teacher(self, which: str, teacher: Teacher) -> None:
        """Take ``teacher`` (e.g. read back from a cache checked against :meth:`identity_hash`) for ``which``."""
        self._teachers[which] = teacher

    def has_teacher(self, which: str) -> bool:
        """Whether the teacher of ``which`` is already computed or given."""
        return which in self._teachers

    @torch.inference_mode()
    def verify_export(self, levels: np.ndarray, out: Any, n_seq: int = 2) -> float:
        """Largest absolute logit difference, on ``n_seq`` held-out sequences, between the exported directory
        ``out`` (loaded with the stock ``AutoModelForCausalLM``) and this model at ``levels``; the live model
        is left uncompressed."""
        from transformers import AutoModelForCausalLM

        dtype = next(self.model.parameters()).dtype
        loaded: Any = AutoModelForCausalLM.from_pretrained(str(out), dtype=dtype)
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
