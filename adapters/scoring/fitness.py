"""Layer-by-layer execution with shared prefixes, the cached dense teacher, KL and perplexity.

Public API (reused by every LLM adapter):

- :class:`LayerRunner` runs a decoder layer by layer. The keyword arguments each layer
  receives (masks, rotary embeddings, ...) are captured once per batch shape with hooks
  during an ordinary forward, so the runner works with any architecture that
  :func:`~levelsearch.adapters.model.models.map_layers` maps, whatever its layers return.
- :meth:`LayerRunner.run_shared` evaluates many *variants* of the model on the same tokens:
  a variant is a per-layer key (e.g. which sub-blocks are dropped, which weights are
  loaded); variants with the same keys on layers ``< j`` share those layers' activations
  (a prefix tree, depth first), and stored activations of earlier variants (anchors) are
  reused the same way. ``layer_fn(layer, h, key) -> h`` applies one layer as the key says.
- :class:`Teacher` keeps the dense model's next-token distributions over a fixed token set
  in bounded memory: the top-``k`` log-probabilities (fp16) and token ids (int32) plus the
  log of the remaining tail mass (fp32) per token, i.e. ``6k + 4`` bytes per token
  (k = 256: 1,540 bytes; 65,536 tokens of SmolLM2 take 101 MB instead of 12.9 GB for
  full fp32 logits).
- :func:`kl_topk` — KL(dense ‖ compressed) per token over the top-``k`` bins plus one tail
  bin (a lower bound of the full-vocabulary KL, tight for k ≥ a few hundred).
- :func:`same_top` and :func:`kl_statistics` — the figures compressed models are compared by
  (llama.cpp's ``perplexity --kl-divergence``): mean, median, 99th and 99.9th percentile of the
  per-token KL and the share of tokens whose likeliest next token is the dense model's.

Everything runs under ``torch.inference_mode`` without gradients.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..model.capture import call_layer, capture_inputs, hidden_arg
from ..model.models import LayerMap

__all__ = [
    "ActivationStore",
    "KL_QUANTILES",
    "LayerRunner",
    "Teacher",
    "kl_statistics",
    "kl_topk",
    "nll_next",
    "same_top",
    "zero_output_like",
]


def zero_output_like(template: Any, hidden: torch.Tensor) -> Any:
    """Zeros shaped like ``hidden`` in the structure of ``template`` (a tensor, or a tuple whose first entry is)."""
    zeros = torch.zeros_like(hidden)
    if isinstance(template, (tuple, list)):
        return type(template)([zeros, *([None] * (len(template) - 1))])
    return zeros


class LayerRunner:
    """Run a decoder-only model layer by layer.

    Args:
        model: a causal LM in eval mode.
        layer_map: its :class:`~levelsearch.adapters.model.models.LayerMap`.
        chunk_tokens: tokens per forward chunk (memory and cache locality; default 1,024).
    """

    def __init__(self, model: nn.Module, layer_map: LayerMap, *, chunk_tokens: int = 1024) -> None:
        self.model = model
        self.map = layer_map
        self.chunk_tokens = int(chunk_tokens)
        self.device = next(model.parameters()).device
        self._kwargs: dict[tuple[int, int], list[dict[str, Any]]] = {}
        self._layer_tuple = False
        self._templates: dict[int, Any] = {}
        self._dropped: set[int] = set()

    # ------------------------------------------------------------ capture
    def _capture(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Layer-0 input for ``input_ids``; on a new shape, also every layer's keyword arguments."""
        shape = (int(input_ids.shape[0]), int(input_ids.shape[1]))
        if shape in self._kwargs:
            return capture_inputs(self.model, self.map.layers, input_ids.to(self.device), record=0)[0]
        handles = []

        def post_layer(mod: nn.Module, args: Any, out: Any) -> None:
            self._layer_tuple = isinstance(out, (tuple, list))

        def post_sub(key: int) -> Callable[..., None]:
            def hook(mod: nn.Module, args: Any, out: Any) -> None:
                self._templates.setdefault(key, out if not isinstance(out, torch.Tensor) else None)

            return hook

        handles.append(self.map.layers[0].register_forward_hook(post_layer))
        for sub in (*self.map.attn, *self.map.mlp):
            handles.append(sub.register_forward_hook(post_sub(id(sub))))
        self.set_dropped([])  # templates must come from the real sub-modules
        stop_at = self.map.norm if self.map.norm is not None else self.map.head
        try:
            first, store = capture_inputs(
                self.model, self.map.layers, input_ids.to(self.device), record=self.map.n_layers, stop_at=stop_at
            )
        finally:
            for h in handles:
                h.remove()
        self._kwargs[shape] = store
        return first

    # ------------------------------------------------------------ layers
    def set_dropped(self, modules: Sequence[nn.Module]) -> None:
        """Make exactly ``modules`` (attention/MLP sub-modules) contribute zero to the residual stream."""
        want = {id(m) for m in modules}
        for m in (*self.map.attn, *self.map.mlp):
            self.drop_module(m, id(m) in want)

    def drop_module(self, module: nn.Module, dropped: bool) -> None:
        """Switch one sub-module between normal and dropped (its output replaced by zeros).

        The module's ``forward`` is replaced on the instance (no copies, no reloads), so
        switching between candidates costs an attribute write; the zeros keep the structure
        the module returns (a tensor, or a tuple whose first entry is the branch output).
        """
        key = id(module)
        if dropped == (key in self._dropped):
            return
        if not dropped:
            del module.forward
            self._dropped.discard(key)
            return
        template = self._templates.get(key)

        def zero_forward(*args: Any, **kwargs: Any) -> Any:
            return zero_output_like(template, hidden_arg(args, kwargs))

        module.forward = zero_forward  # type: ignore[method-assign]
        self._dropped.add(key)

    def run_layer(self, idx: int, h: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        """Apply decoder layer ``idx`` to ``h`` with its captured keyword arguments."""
        return call_layer(self.map.layers[idx], h, kwargs)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Output-head logits (fp32) from the last layer's output ``h``."""
        if self.map.norm is not None:
            h = self.map.norm(h)
        z = self.map.head(h).float()
        if self.map.softcap:
            z = torch.tanh(z / self.map.softcap) * self.map.softcap
        return z

    # ------------------------------------------------------------ shared evaluation
    @torch.inference_mode()
    def run_shared(
        self,
        input_ids: torch.Tensor,
        keys: Sequence[Sequence[Hashable]],
        layer_fn: Callable[[int, torch.Tensor, Hashable], torch.Tensor],
        on_output: Callable[[torch.Tensor, list[int]], None],
        *,
        anchors: Sequence[tuple[Sequence[Hashable], list[torch.Tensor]]] = (),
        record: set[int] | None = None,
    ) -> dict[int, list[torch.Tensor]]:
        """Evaluate variants ``keys[c][layer]`` on ``input_ids``, sharing equal prefixes.

        ``layer_fn(layer, h, key)`` applies one layer; ``on_output(h_last, candidates)`` is
        called once per distinct variant with the last layer's output. ``anchors`` are
        ``(keys, states)`` of variants evaluated before on the same tokens (``states[l]``
        is layer ``l``'s input, ``states[L]`` the last output); their states are reused
        wherever a prefix matches. Returns the states of the candidates in ``record``.
        """
        n_layers = self.map.n_layers
        h0 = self._capture(input_ids) if not anchors else None
        recorded: dict[int, list[torch.Tensor]] = {}
        record = record or set()

        def rec(layer: int, h: torch.Tensor | None, idxs: list[int], anc: list[int], path: list[torch.Tensor]) -> None:
            if layer == n_layers:
                assert h is not None
                on_output(h, idxs)
                for c in idxs:
                    if c in record:
                        recorded[c] = list(path)
                return
            groups: dict[Hashable, list[int]] = {}
            for c in idxs:
                groups.setdefault(keys[c][layer], []).append(c)
            for key, members in groups.items():
                match = [a for a in anc if anchors[a][0][layer] == key]
                if match:
                    h2 = anchors[match[0]][1][layer + 1]
                else:
                    if h is None:  # only anchors got us here: their states hold this layer's input
                        h = anchors[anc[0]][1][layer]
                    h2 = layer_fn(layer, h, key)
                path.append(h2)
                rec(layer + 1, h2, members, match, path)
                path.pop()

        if anchors:
            start = anchors[0][1][0]
            rec(0, start, list(range(len(keys))), list(range(len(anchors))), [start])
        else:
            assert h0 is not None
            rec(0, h0, list(range(len(keys))), [], [h0])
        return recorded

    def layer_kwargs(self, input_ids: torch.Tensor) -> list[dict[str, Any]]:
        """The captured keyword arguments of every layer for this batch shape."""
        shape = (int(input_ids.shape[0]), int(input_ids.shape[1]))
        if shape not in self._kwargs:
            self._capture(input_ids)
        return self._kwargs[shape]

    def chunks(self, n_seq: int, seq_len: int) -> list[slice]:
        """Slices of sequences of about ``chunk_tokens`` tokens each."""
        per = max(1, self.chunk_tokens // seq_len)
        return [slice(s, min(n_seq, s + per)) for s in range(0, n_seq, per)]


#: The teacher file's layout; a file of another one is rebuilt.
TEACHER_FORMAT = "2"


class Teacher:
    """The dense model's top-``k`` next-token log-probabilities over a fixed token set.

    Attributes:
        nll: the dense model's mean next-token NLL over the set (nats; ``exp(nll)`` is its perplexity).
        logp: ``[n_seq, seq_len, k]`` fp16 log-probabilities of the ``k`` likeliest tokens.
        index: ``[n_seq, seq_len, k]`` int32 token ids.
        tail: ``[n_seq, seq_len]`` fp32 log of the probability mass outside the top ``k``.
    """

    def __init__(self, logp: torch.Tensor, index: torch.Tensor, tail: torch.Tensor, nll: float = math.nan) -> None:
        self.logp, self.index, self.tail = logp, index, tail
        self.nll = float(nll)  # the dense model's mean next-token NLL over the set (nats), when known

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.logp, self.index, self.tail))

    @staticmethod
    def bytes_per_token(k: int) -> int:
        """Memory bound of the teacher cache: ``6k + 4`` bytes per token."""
        return 6 * k + 4

    @classmethod
    @torch.inference_mode()
    def from_logits_fn(
        cls, tokens: torch.Tensor, logits_fn: Callable[[torch.Tensor], torch.Tensor], k: int, chunk_seqs: int
    ) -> Teacher:
        """Build from ``logits_fn(input_ids[b, T]) -> logits[b, T, V]`` run over ``tokens`` in chunks."""
        n, t = tokens.shape
        logp = torch.empty(n, t, k, dtype=torch.float16)
        index = torch.empty(n, t, k, dtype=torch.int32)
        tail = torch.empty(n, t, dtype=torch.float32)
        nll_sum, nll_count = 0.0, 0
        for s in range(0, n, chunk_seqs):
            z = logits_fn(tokens[s : s + chunk_seqs]).float()
            lp = torch.log_softmax(z, dim=-1)
            nxt = tokens[s : s + chunk_seqs, 1:].to(lp.device).unsqueeze(-1)
            nll_sum -= float(lp[:, :-1].gather(-1, nxt).sum())
            nll_count += nxt.numel()
            top, idx = lp.topk(min(k, lp.shape[-1]), dim=-1)
            logp[s : s + chunk_seqs] = top.cpu().half()
            index[s : s + chunk_seqs] = idx.cpu().int()
            mass = top.exp().sum(-1).clamp(max=1.0)
            tail[s : s + chunk_seqs] = torch.log1p(-mass).clamp(min=-30.0).cpu()
        return cls(logp, index, tail, nll_sum / max(1, nll_count))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"logp": self.logp.contiguous(), "index": self.index.contiguous(), "tail": self.tail.contiguous()}

    def save(self, path: str | Path, metadata: dict[str, str] | None = None) -> None:
        """Write the teacher to a safetensors file, atomically, with ``metadata``, its ``nll`` and a sha256 of
        all of it (tensors and every metadata entry: an edited ``nll`` fails it as an edited tensor does)."""
        import os

        from safetensors.torch import save_file

        from ..model.integrity import metadata_checksum

        tensors = self.tensors()
        meta = {**(metadata or {}), "nll": repr(self.nll), "format": TEACHER_FORMAT}
        meta["sha256"] = metadata_checksum(tensors, meta)
        tmp = Path(f"{path}.tmp")
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path, metadata: dict[str, str] | None = None) -> Teacher | None:
        """Read a teacher written by :meth:`save`; ``None`` if missing, or refused (one line on stderr).

        Refused: a file that is truncated or unreadable, written for other ``metadata`` (another
        problem: its tag holds the weights' and data's fingerprint) or by another format, without a
        checksum, or whose tensors or metadata (``nll`` included) do not match their checksum. The caller
        rebuilds it.
        """
        from safetensors import safe_open

        from ..model.integrity import metadata_checksum, say_rebuild

        if not Path(path).is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if any(meta.get(k) != v for k, v in (metadata or {}).items()):
                    say_rebuild(path, "was made for another model, data or settings")
                    return None
                t = {k: f.get_tensor(k) for k in ("logp", "index", "tail")}
        except Exception as exc:  # SafetensorError (truncated, bad header), a missing tensor, OSError
            say_rebuild(path, f"is unreadable ({type(exc).__name__}: truncated or damaged)")
            return None
        shapes_ok = t["logp"].shape == t["index"].shape and tuple(t["tail"].shape) == tuple(t["logp"].shape[:2])
        body = {k: v for k, v in meta.items() if k != "sha256"}
        if not shapes_ok or meta.get("format") != TEACHER_FORMAT or meta.get("sha256") != metadata_checksum(t, body):
            say_rebuild(path, "fails its checksum (edited, corrupted or written by an older levelsearch)")
            return None
        try:
            nll = float(meta["nll"])
        except (KeyError, ValueError):
            say_rebuild(path, "has no readable nll")
            return None
        return cls(t["logp"], t["index"], t["tail"], nll)

    def rows(self, seqs: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.logp[seqs], self.index[seqs], self.tail[seqs]


def kl_topk(logits: torch.Tensor, t_logp: torch.Tensor, t_index: torch.Tensor, t_tail: torch.Tensor) -> torch.Tensor:
    """Per-token KL(teacher ‖ student) over the teacher's top-``k`` tokens plus one tail bin (nats).

    Exactly, per position: ``Σ_{i ∈ top-k} p_i (log p_i − log q_i) + p_t (log p_t − log q_t)``, where
    ``p_i`` are the teacher's top-``k`` probabilities (stored as fp16 log-probabilities), ``p_t`` its stored
    tail mass ``1 − Σ p_i``, ``q`` the student's full softmax (fp32) and ``q_t = 1 − Σ_{i ∈ top-k} q_i``
    (floored at 1e-12); negative values from rounding are set to 0. Merging the tail tokens into one bin
    can only lower a KL, so this is a lower bound of the full-vocabulary KL, equal to it (up to the fp16
    rounding of the teacher) when ``k`` is the vocabulary size.

    Args:
        logits: student logits ``[..., V]``.
        t_logp, t_index, t_tail: the teacher's rows for the same positions (``[..., k]``, ``[..., k]``, ``[...]``).
    """
    lq = torch.log_softmax(logits.float(), dim=-1)
    dev = lq.device
    lp = t_logp.to(dev).float()
    lq_k = lq.gather(-1, t_index.to(dev).long())
    p = lp.exp()
    kl = (p * (lp - lq_k)).sum(-1)
    q_tail = (1.0 - lq_k.exp().sum(-1)).clamp(min=1e-12)
    p_tail = t_tail.to(dev).exp()
    kl = kl + p_tail * (t_tail.to(dev) - q_tail.log())
    return kl.clamp(min=0.0)


def same_top(logits: torch.Tensor, t_index: torch.Tensor) -> torch.Tensor:
    """Per token, whether the student's likeliest next token is the teacher's (``t_index[..., 0]``, its top-1).

    Args:
        logits: student logits ``[..., V]``.
        t_index: the teacher's top-``k`` token ids for the same positions, likeliest first (``[..., k]``).
    """
    return logits.argmax(-1) == t_index[..., 0].to(logits.device).long()


#: The per-token KL quantiles :func:`kl_statistics` reports: name → fraction.
KL_QUANTILES: dict[str, float] = {"median": 0.5, "p99": 0.99, "p99_9": 0.999}


def kl_statistics(kl: Any, top: Any) -> dict[str, float]:
    """The KL statistics of one model against the reference over a set of token positions.

    Args:
        kl: the per-token KL values (nats; any shape, e.g. :func:`kl_topk`'s), one per position.
        top: per position, whether the model's likeliest next token is the reference's (:func:`same_top`).

    Returns:
        ``kl`` (the mean), ``kl_median``, ``kl_p99``, ``kl_p99_9`` (the 50th, 99th and 99.9th percentiles,
        linear interpolation between order statistics, as llama.cpp's ``perplexity --kl-divergence`` and
        ``numpy.quantile``) and ``top1`` (the fraction of positions with the same top token, 0..1).
        ``nan`` everywhere for no positions.
    """
    import numpy as np

    v = np.asarray(kl, dtype=np.float64).ravel()
    t = np.asarray(top, dtype=bool).ravel()
    if v.size != t.size:
        raise ValueError(f"kl has {v.size} positions but top has {t.size}; give one of each per position")
    if v.size == 0:
        return {"kl": math.nan, "top1": math.nan, **{f"kl_{n}": math.nan for n in KL_QUANTILES}}
    qs = np.quantile(v, list(KL_QUANTILES.values()))
    out = {"kl": float(v.mean()), **{f"kl_{n}": float(q) for n, q in zip(KL_QUANTILES, qs)}}
    out["top1"] = float(t.mean())
    return out


def nll_next(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Per-token negative log-likelihood of the next token (positions ``0..T-2``), nats."""
    lq = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return -lq.gather(-1, input_ids[:, 1:].to(lq.device).unsqueeze(-1)).squeeze(-1)


class ActivationStore:
    """A small LRU of per-chunk layer states of evaluated variants (the anchors of :meth:`LayerRunner.run_shared`).

    Memory: ``(L + 1) × tokens × hidden × 4`` bytes per stored variant (fp32); at most
    ``max_variants`` variants are kept.
    """

    def __init__(self, max_variants: int = 2) -> None:
        self.max_variants = int(max_variants)
        self._store: OrderedDict[Hashable, dict[Hashable, list[torch.Tensor]]] = OrderedDict()

    def put(self, variant: Hashable, chunk: Hashable, states: list[torch.Tensor]) -> None:
        if self.max_variants <= 0:
            return
        self._store.setdefault(variant, {})[chunk] = states
        self._store.move_to_end(variant)
        while len(self._store) > self.max_variants:
            self._store.popitem(last=False)

    def anchors(self, chunk: Hashable) -> list[tuple[Any, list[torch.Tensor]]]:
        return [(v, d[chunk]) for v, d in reversed(self._store.items()) if chunk in d]

    def has(self, variant: Hashable) -> bool:
        return variant in self._store

    def touch(self, variant: Hashable) -> None:
        if variant in self._store:
            self._store.move_to_end(variant)

    def clear(self) -> None:
        self._store.clear()


def mean_or_inf(total: float, count: int) -> float:
    return total / count if count else math.inf
