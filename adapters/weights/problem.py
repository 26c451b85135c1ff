"""The layer-wise problem of every weight codec: variants swapped in from a variant database.

A :class:`WeightLevelProblem` takes any registered :class:`~levelsearch.adapters.codecs.WeightCodec`
(by name or instance) and a target, and needs no subclass: the codec says which modules are the units,
what the levels are, what each costs and what the budget is (its level space), which calibration
statistic its variants need, how they are made, stored, loaded and applied, and how an assignment is
exported. Here: the model, the calibration pool and the held-out set (and everything
:class:`~levelsearch.adapters.scoring.layerwise.LayerwiseProblem` shares: the fitness with its memos and
anchors, the held-out report), the :class:`~levelsearch.adapters.weights.database.VariantDatabase` (built on
first use, then reused), and the dense model's top-``k`` teacher on both sets, computed on first use
(:meth:`~levelsearch.adapters.scoring.layerwise.LayerwiseProblem.teacher`: its pass puts every unit back to its
dense weight, whatever was swapped in before), so a problem built only to export and check an assignment
(``levelsearch export``) never computes it. Only units whose level changed are loaded from the
memory-mapped database.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, overload

import numpy as np
import torch

from levelsearch import solve_additive
from levelsearch.ties import TiedSpace

from ..codecs.registry import get_weight_codec
from ..model.data import TokenSet
from ..model.integrity import tokens_fingerprint
from ..model.models import DEFAULT_MODEL, decoder_layers
from ..model.units import engine_ties, named_units, unit_weight
from ..run.export import export_model
from ..scoring.fisher import fisher_estimates
from ..scoring.layerwise import LayerwiseProblem
from .database import VariantDatabase, build_database, default_database_dir

if TYPE_CHECKING:  # the contract imports this module (a weight codec builds its problem here)
    from ..codecs.base import WeightCodec

__all__ = [
    "ESTIMATES",
    "WeightLevelProblem",
    "DENSE",
    "dp_levels",
    "random_levels",
    "export_levels",
    "verify_levels_export",
]

DENSE = None  # a candidate standing for the uncompressed model in :meth:`WeightLevelProblem.score`


#: what :meth:`WeightLevelProblem.unit_errors` can measure (``estimates=``)
ESTIMATES = ("fisher", "layer")
#: which units share a level (``ties=``): as the engines that run the export need, or none
TIES = ("engine", "none")


def default_ties(codec: Any) -> str:
    """The ties a codec's runs use by default: its ``default_ties`` when it declares one, else ``"engine"`` when it
    writes a format of its :attr:`~levelsearch.adapters.codecs.WeightCodec.tied_formats`, else ``"none"``."""
    declared = getattr(codec, "default_ties", None)
    if declared in TIES:
        return str(declared)
    return "engine" if set(getattr(codec, "formats", ())) & set(getattr(codec, "tied_formats", ())) else "none"


class WeightLevelProblem(LayerwiseProblem):
    """The level problem of a weight codec (see the module docstring); kind ``llm-<codec name>``.

    Args:
        model: ``"smollm2"`` (offline default), a model directory, GGUF file or hub id.
        codec: a registered weight codec's name, or a :class:`~levelsearch.adapters.codecs.WeightCodec`
            (a named kind such as :class:`~levelsearch.adapters.codecs.quant.problem.QuantProblem` fixes it).
        target: the budget in the codec's words (average sparsity, bits per weight, fraction kept ...).
        spec, budget: the codec's level and budget options as dicts (or flat, in ``options``; a codec's
            own option named ``budget``, such as quant's ``"exact"`` / ``"band"``, may be given here).
        options: the codec's level options (the keys of its
            :attr:`~levelsearch.adapters.codecs.WeightCodec.default_spec`) and budget options (of its
            :attr:`~levelsearch.adapters.codecs.WeightCodec.budget_defaults`); ``database``, ``progress``,
            ``search_tokens``, ``estimates`` (see :meth:`_setup`); and the model and data settings of
            :meth:`~levelsearch.adapters.scoring.layerwise.LayerwiseProblem._setup_model_and_data`.

    A named problem kind is a subclass that sets :attr:`codec_name` and :attr:`default_target` and nothing
    else: its name is ``llm-<codec_name>`` and its signature lists its codec's options with their defaults.
    """

    _option_sources = ("_setup", "_setup_model_and_data")
    #: the codec of a named problem kind (``llm-sparsity`` ...); the generic problem takes ``codec=``
    codec_name: ClassVar[str] = ""
    #: the target of a named problem kind when none is given
    default_target: ClassVar[float | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.codec_name or "__init__" in cls.__dict__:
            return
        cls.name = f"llm-{cls.codec_name}"
        codec = get_weight_codec(cls.codec_name)
        kw = inspect.Parameter.KEYWORD_ONLY
        params = [
            inspect.Parameter("model", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=DEFAULT_MODEL),
            inspect.Parameter("target", kw, default=cls.default_target),
        ]
        params += [
            inspect.Parameter(k, kw, default=v) for k, v in {**codec.default_spec, **codec.budget_defaults}.items()
        ]
        names = {p.name for p in params}
        for source in cls._option_sources:
            for p in inspect.signature(getattr(cls, source)).parameters.values():
                if p.kind is kw and p.name not in names:
                    params.append(p)
                    names.add(p.name)
        cls.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        codec: str | WeightCodec | None = None,
        target: float | None = None,
        spec: dict[str, Any] | None = None,
        budget: dict[str, Any] | str | None = None,
        **options: Any,
    ) -> None:
        codec = codec or self.codec_name
        if not codec:
            raise ValueError("WeightLevelProblem needs a codec: codec='name' of a registered weight codec, or one")
        chosen = get_weight_codec(codec) if isinstance(codec, str) else codec
        target = self.default_target if target is None else target
        if target is None:
            raise ValueError(f"give a target for the {chosen.name} codec (target=...)")
        if budget is not None and not isinstance(budget, dict):
            options["budget"] = budget  # a codec's own budget option of that name (quant's "exact" / "band")
            budget = None
        spec = {**(spec or {}), **{k: options.pop(k) for k in list(options) if k in chosen.default_spec}}
        budgets = {**(budget or {}), **{k: options.pop(k) for k in list(options) if k in chosen.budget_defaults}}
        self._setup_codec(chosen, model, target, spec, budgets, **options)

    def _setup_codec(
        self,
        codec: str | WeightCodec,
        model: str,
        target: float,
        spec_options: dict[str, Any],
        budget_options: dict[str, Any],
        **options: Any,
    ) -> None:
        """Everything, from the codec: :meth:`_setup` with the codec's spec at ``target``, then the level
        space of the codec's costs and budget (``budget_options`` over its ``budget_defaults``)."""
        self.codec: WeightCodec = get_weight_codec(codec) if isinstance(codec, str) else codec
        self.name = f"llm-{self.codec.name}"
        self.target = float(target)
        self.budget_options = {**self.codec.budget_defaults, **budget_options}
        self.codec.check_budget(self.budget_options)  # before anything slow
        self._setup(lambda m: self.codec.make_spec(m, self.target, **spec_options), model, **options)
        space = self.codec.make_space(self.costs, self.numel, self.target, self.budget_options)
        super().__init__(self._tie(space))

    def _tie(self, space: Any) -> Any:
        """``space`` over the tie groups :attr:`ties` names (``"engine"``: fused shards and a layer's experts of one
        fused parameter share a level, :func:`~levelsearch.adapters.model.units.engine_ties`; ``"none"``: none).
        Units share a level only when their level values are the same (a unit alone otherwise)."""
        if self.ties == "none":
            return space
        labels = engine_ties(self.unit_names, self.modules)
        keyed = [(lab, json.dumps(self.db.values(n))) for lab, n in zip(labels, self.unit_names)]
        tied = TiedSpace(space, keyed)
        return tied if tied.n_units < space.n_units else space

    @overload
    def member_levels(self, levels: np.ndarray) -> np.ndarray: ...

    @overload
    def member_levels(self, levels: None) -> None: ...

    def member_levels(self, levels: np.ndarray | None) -> np.ndarray | None:
        """Every unit's level under ``levels``: a search assignment over tie groups expanded (as it is otherwise)."""
        if levels is None or not isinstance(self.space, TiedSpace) or len(levels) != self.space.n_units:
            return levels
        return self.space.expand(levels)

    def _setup(
        self,
        make_spec: Callable[[Any], dict[str, Any]],
        model: str,
        *,
        database: str | None = None,
        progress: bool = True,
        search_tokens: int | None = None,
        estimates: str = "fisher",
        ties: str | None = None,
        **options: Any,
    ) -> None:
        """Load the model and data, then ``make_spec(model module)`` (checks the settings before anything
        slow), open or build the variant database of that spec, and tabulate every unit's level amounts
        and costs (:attr:`amounts`, :attr:`costs`) from the codec. A subclass with its own level space
        calls this, then ``LayerwiseProblem.__init__(space)``; :meth:`_setup_codec` does both from the codec.

        Args:
            database: database directory (default: under the model cache, keyed by spec and data).
            progress: progress bars while building the database (default on).
            search_tokens: fitness uses only the first ``search_tokens`` tokens of the calibration
                pool (default: all); the database's statistics always use the whole pool.
            estimates: what :meth:`unit_errors` measures: ``"fisher"`` (default: K-FAC Fisher-weighted KL
                estimates on the search pool, :mod:`~levelsearch.adapters.scoring.fisher`; one forward and one
                backward pass over the pool, counted in :attr:`n_forward_tokens` as three forwards) or
                ``"layer"`` (the database's normalised layer errors: free, much weaker; the ``dp``
                baseline's input either way).
            ties: ``"engine"`` (units an engine runs with one scheme share one level: fused q/k/v and gate/up
                shards, a layer's experts of one fused parameter; the search's units are then the tie groups,
                :class:`~levelsearch.ties.TiedSpace`) or ``"none"``; default: the codec's
                (:attr:`~levelsearch.adapters.codecs.WeightCodec.default_ties`, ``"none"`` when it names none).
            options: the model and data: see
                :meth:`~levelsearch.adapters.scoring.layerwise.LayerwiseProblem._setup_model_and_data`.
        """
        if estimates not in ESTIMATES:
            raise ValueError(f"estimates {estimates!r}: choose one of {', '.join(ESTIMATES)}")
        if ties is not None and ties not in TIES:
            raise ValueError(f"ties {ties!r}: choose one of {', '.join(TIES)}")
        self.ties = ties or default_ties(getattr(self, "codec", None))
        self.estimates = estimates
        self._progress = bool(progress)
        self.fisher_tokens = 0  # token-equivalents the Fisher estimates took (once measured)
        self._setup_model_and_data(model or DEFAULT_MODEL, **options)
        self.spec = make_spec(self.model)
        if not hasattr(self, "codec"):
            self.codec = get_weight_codec(self.spec.get("kind"))
            self.budget_options = dict(self.codec.budget_defaults)
        self.settings["content"] = self.content  # describe() spreads the settings
        if search_tokens is not None and int(search_tokens) < self.calibration.n_tokens:
            # fitness draws from the first ``search_tokens`` tokens of the pool; the statistics use all of it
            n = self.calibration.n_sequences_for(int(search_tokens))
            self.search_pool = TokenSet(self.calibration.tokens[:n], "calibration")
        self.max_fidelity = self.search_pool.n_tokens
        self.db: VariantDatabase = self._open_database(database, progress)
        self.unit_names = self.db.unit_names
        named = named_units(self.model)
        self.modules = [named[u] for u in self.unit_names]
        self.unit_layer = np.array([self.db.manifest["units"][u]["layer"] for u in self.unit_names])
        self.layer_units = [np.flatnonzero(self.unit_layer == i) for i in range(self.map.n_layers)]
        self.numel = np.array([m.weight.numel() for m in self.modules], dtype=np.int64)
        self._dense = [unit_weight(m).detach().to("cpu", copy=True) for m in self.modules]  # out × in
        self._dense_now = np.ones(len(self.modules), dtype=bool)
        # no teacher here: it is computed on first use, its pass restoring the dense weights (_layer_fn, key None)
        per_unit = [(self.db.values(n), self.db.shape(n)) for n in self.unit_names]
        self.amounts = [self.codec.unit_amounts(self.spec, vs, shape) for vs, shape in per_unit]
        self.costs = [self.codec.unit_costs(self.spec, vs, shape) for vs, shape in per_unit]

    def _open_database(self, database: str | None, progress: bool) -> VariantDatabase:

        calib = {
            "source": self.settings["data"] or "pydoc_data.topics",
            "tokens": self.calibration.n_tokens,
            "seq_len": self.calibration.seq_len,
            "split_seed": int(self.settings["seed"]),
            "content": tokens_fingerprint(self.calibration)[:20],  # the statistics' tokens, not a path
        }
        return build_database(
            database or default_database_dir(self.model_name, self.spec, calib, self.weights_sha256),
            self.model,
            self.calibration.tokens,
            self.spec,
            codec=self.codec,
            model_id=self.model_name,
            calibration=calib,
            seed=int(self.settings["seed"]),
            progress=progress,
            fingerprint=self.weights_sha256,
        )

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
        """What :meth:`describe` says of the budget besides the spec (the codec's ``describe_budget``)."""
        return self.codec.describe_budget(self.target, self.budget_options)

    # ------------------------------------------------------------------ what the codec's levels mean
    def uniform_levels(self) -> np.ndarray | None:
        """The codec's uniform baseline (:meth:`~levelsearch.adapters.codecs.WeightCodec.uniform_levels`)."""
        return self.codec.uniform_levels(self)

    def profile(self, levels: np.ndarray) -> np.ndarray:
        """Each unit's ``amount / numel`` under ``levels`` (sparsity, bits per weight, fraction kept ...)."""
        levels = self.member_levels(levels)
        return np.array([self.amounts[u][int(lv)] / self.numel[u] for u, lv in enumerate(levels)])

    def average(self, levels: np.ndarray) -> float:
        """``Σ amount / Σ numel`` under ``levels``: what the target names."""
        levels = self.member_levels(levels)
        return float(sum(self.amounts[u][int(lv)] for u, lv in enumerate(levels)) / self.numel.sum())

    def unit_type(self, unit: int) -> str:
        """The unit's module name within its layer (``q_proj``, ``down_proj`` ...): what plots group by."""
        return self.unit_names[unit].rsplit(".", 1)[-1]

    # ------------------------------------------------------------------ weights
    def _put(self, unit: int, level: int | None) -> None:
        mod, name = self.modules[unit], self.unit_names[unit]
        if level is None:
            if not self._dense_now[unit]:
                self.codec.apply_variant(mod, self._dense[unit])
                self.db.forget(name)
                self._dense_now[unit] = True
            return
        self.db.put(mod, name, int(level))
        self._dense_now[unit] = False

    def apply(self, levels: np.ndarray | None) -> None:
        """Put the model's weights at ``levels`` (``None``: the dense weights)."""
        levels = self.member_levels(levels)
        for u in range(len(self.modules)):
            self._put(u, None if levels is None else int(levels[u]))

    def layer_key(self, levels: np.ndarray | None, layer: int) -> tuple[int, ...] | None:
        levels = self.member_levels(levels)
        return None if levels is None else tuple(int(x) for x in np.asarray(levels)[self.layer_units[layer]])

    def candidate_keys(self, candidate: np.ndarray | None) -> tuple[tuple[int, ...] | None, ...]:
        return tuple(self.layer_key(candidate, i) for i in range(self.map.n_layers))

    def _layer_fn(self, kwargs: list[dict[str, Any]]) -> Any:
        def apply(layer: int, h: torch.Tensor, key: Any) -> torch.Tensor:
            for pos, u in enumerate(self.layer_units[layer]):
                self._put(int(u), None if key is None else key[pos])
            return self.runner.run_layer(layer, h, kwargs[layer])

        return apply

    def dense_keys(self) -> list[None]:
        return [DENSE] * self.map.n_layers

    def dense_candidate(self) -> None:
        """The candidate standing for the uncompressed model in :meth:`score` and :meth:`heldout_report`."""
        return DENSE

    def _measure_unit_errors(self) -> np.ndarray:
        """Per-unit, per-level KL estimates: Fisher-weighted (``estimates="fisher"``, their tokens counted in
        :attr:`n_forward_tokens`) or :meth:`layer_errors` (``"layer"``)."""
        if self.estimates == "layer":
            return self.layer_errors()

        est, tokens = fisher_estimates(self, progress=self._progress)
        self.n_forward_tokens += tokens
        self.fisher_tokens = tokens
        return self._per_search_unit(est)

    def _per_search_unit(self, values: np.ndarray) -> np.ndarray:
        """Per-unit, per-level estimates as the search's units have them: summed over each tie group."""
        return self.space.reduce_values(values) if isinstance(self.space, TiedSpace) else values

    def variant_weight(self, unit: int, level: int) -> torch.Tensor:
        """The fp32 ``out × in`` weight of ``unit`` at ``level`` (the database's decoded variant, a copy)."""
        return self.db.weight(self.unit_names[unit], int(level))

    def layer_errors(self) -> np.ndarray:
        """The database's per-unit, per-level normalised output errors ``tr(ΔW H ΔWᵀ)/tr(W H Wᵀ)`` (free), per
        search unit (a tie group's summed over its members)."""
        return self._per_search_unit(self.db.errors())

    # ------------------------------------------------------------------ export
    def export_state(self, levels: np.ndarray) -> dict[str, torch.Tensor]:
        """The state dict at ``levels``: every unit as the dense weight its variant stands for (the live
        model is left at ``levels``)."""
        self.apply(levels)
        return dict(self.model.state_dict())

    def searched_fraction(self) -> float:
        """The fraction of the decoder layers' weights (every parameter of them) the search compresses."""
        total = sum(p.numel() for layer in decoder_layers(self.model) for p in layer.parameters())
        return float(self.numel.sum() / max(total, 1))

    def export_record(self, levels: np.ndarray) -> dict[str, Any]:
        """What ``levelsearch_compression.json`` says: each unit's level and what the codec records of it."""
        per_unit: dict[str, Any] = {}
        levels = self.member_levels(levels)
        for u, name in enumerate(self.unit_names):
            value = self.db.values(name)[int(levels[u])]
            entry = self.codec.export_entry(self.spec, value, int(self.numel[u]))
            per_unit[name] = {"level": int(levels[u]), **entry}
        return {"kind": self.spec["kind"], "spec": self.spec, "units": per_unit}


def export_levels(
    problem: WeightLevelProblem, levels: np.ndarray, out: str | Path, info: dict[str, Any] | None = None
) -> Path:
    """A Hugging Face directory of the dense weights the variants stand for, whatever the codec's own
    :meth:`~levelsearch.adapters.codecs.Codec.export` writes (kept for callers of this name)."""

    return export_model(problem, levels, out, {"how": problem.codec.export_how, **(info or {})})


def verify_levels_export(problem: WeightLevelProblem, levels: np.ndarray, out: str | Path, n_seq: int = 2) -> float:
    """:meth:`~..scoring.layerwise.LayerwiseProblem.verify_export` (kept for callers of this name)."""
    return problem.verify_export(levels, out, n_seq)


def dp_levels(problem: WeightLevelProblem, errors: np.ndarray | None = None) -> np.ndarray:
    """Knapsack DP on per-unit errors, assumed additive: ``errors`` (default: the database's normalised
    output errors, :meth:`WeightLevelProblem.layer_errors`)."""
    errors = problem.layer_errors() if errors is None else errors
    return solve_additive(problem.space, np.nan_to_num(errors, nan=np.inf))[0]


def random_levels(problem: WeightLevelProblem, *, n: int = 16, fidelity: int = 2048, seed: int = 0) -> np.ndarray:
    """Best of ``n`` random feasible assignments by KL on ``fidelity`` calibration tokens."""
    rng = np.random.default_rng(seed)
    cands = [problem.space.sample(rng) for _ in range(n)]
    kl, _ = problem.score(cands, "calibration", problem.search_pool.batch(fidelity, seed))
    return cands[int(np.argmin(kl))]
