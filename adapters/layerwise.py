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

import hashlib
import json
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch

from levelsearch import Problem

from .data import TokenSet, calibration_and_heldout
from .fitness import LayerRunner, Teacher
from .models import LayerMap, load_model, map_layers

__all__ = ["LayerwiseProblem"]

LayerFn = Callable[[int, torch.Tensor, Any], torch.Tensor]


class LayerwiseProblem(Problem):
    """Base class of the ``llm-*`` problems (see the module docstring); not a problem by itself."""

    uses_fidelity = True

    def _load(
        self,
        model: str,
        loaded: tuple[Any, Any] | None,
        *,
        device: str | None,
        dtype: str | None,
        threads: int | None,
    ) -> None:
        """Set torch's threads, load ``(model, tokenizer)`` (or take ``loaded``) and map its layers."""
        if threads is not None:
            torch.set_num_threads(int(threads))
        self.model_name = str(model)
        self.model: Any
        self.tokenizer: Any
        self.model, self.tokenizer = loaded if loaded is not None else load_model(model, device=device, dtype=dtype)
        self.map: LayerMap = map_layers(self.model)

    def _data(
        self,
        data: str | None,
        *,
        seq_len: int,
        calibration_tokens: int,
        heldout_tokens: int,
        top_k: int,
        seed: int,
        chunk_tokens: int,
    ) -> None:
        """The calibration pool, the held-out set, their content fingerprint, the runner and the teacher size."""
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
    def _layer_fn(self, kwargs: list[dict[str, Any]]) -> LayerFn:
        """``fn(layer, h, key) -> h``: decoder layer ``layer`` run on ``h`` as the per-layer ``key`` says."""
        raise NotImplementedError

    def dense_keys(self) -> Sequence[Hashable]:
        """The per-layer keys of the uncompressed model."""
        raise NotImplementedError

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

    def identity_hash(self) -> str:
        """A short hash of :meth:`describe` (names cache files that belong to this exact problem)."""
        return hashlib.sha256(json.dumps(self.describe(), sort_keys=True).encode()).hexdigest()[:16]
