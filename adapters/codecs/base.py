"""The codec contract and the codec registry.

A **codec** is one compression kind. It says

- which level problem it plugs into and how a ``levelsearch compress`` run builds it from the
  settings (:meth:`Codec.make_problem`; the target's meaning and range are the codec's);
- which baselines it brings and how a run scores them (:meth:`Codec.run_baselines`, :meth:`Codec.baselines`);
- how a level assignment reads in a report (:meth:`Codec.summary`, :attr:`Codec.profile_label`) and
  how the model at an assignment is exported (:meth:`Codec.export`: a Hugging Face directory the stock
  engines load; a codec with a packed format overrides it).

A :class:`WeightCodec` is a codec whose variants of a unit are made once and stored in a
:class:`~levelsearch.adapters.weights.database.VariantDatabase`; any weight codec plugs into the one
:class:`~levelsearch.adapters.weights.problem.WeightLevelProblem` with no subclass. It says

- **units**: which modules of a model are its units (:meth:`WeightCodec.units`; default every linear
  of every decoder layer);
- **levels and costs**: the spec of its levels (:meth:`WeightCodec.make_spec`), each level's value
  for a unit (:meth:`WeightCodec.level_values`: zeros, bits, ``[zeros, bits]``, a fraction kept), the
  amount of the budget's quantity a level keeps (:meth:`WeightCodec.amount`, or
  :meth:`WeightCodec.unit_amounts` when it depends on the unit's shape: zeros, bits, parameters; its
  average per weight is what ``--target`` names), its cost in the level space
  (:meth:`WeightCodec.level_cost` / :meth:`WeightCodec.unit_costs`, default the amount) and the
  budget (:meth:`WeightCodec.make_space`);
- **statistics**: which calibration statistic making a variant needs (:attr:`WeightCodec.statistics`:
  the Hessian ``2XᵀX/N``, its diagonal, the layer inputs ``X`` themselves, or nothing);
- **variants**: how to make every level's variant of a weight (:meth:`WeightCodec.make_variants`, with
  the kernels of :mod:`..kernels`), store it compactly and load it back (:meth:`WeightCodec.encode`,
  :meth:`WeightCodec.decode`), the dense weight it stands for (:meth:`WeightCodec.dense`), and how a
  decoded variant is applied to the live module (:meth:`WeightCodec.apply_variant`);
- per-layer statistics its baselines need, computed while the database is built
  (:meth:`WeightCodec.layer_statistics`), and what an exported unit records (:meth:`WeightCodec.export_entry`).

The registry (:data:`CODECS`, a :class:`levelsearch.registry.Registry`) maps a name (``--method NAME``,
and a database spec's ``"kind"``) to a codec class: the built-in ones, then every entry point of the
group ``levelsearch.codecs`` (``name = "package.module:CodecClass"``); a name taken twice is an error,
never a silent shadow.

This module stays light (numpy and the core): the CLI reads the kinds' declarations through it when it
builds ``levelsearch compress``'s options. The machinery a method runs (torch, the problems, the export,
matplotlib for plots) is imported inside that method.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from levelsearch import LevelSpace
from levelsearch.schema import Field

from .registry import (
    CODECS,
    ENTRY_POINT_GROUP,
    available_codecs,
    get_codec,
    get_weight_codec,
    register_codec,
)

__all__ = [
    "CODECS",
    "ENTRY_POINT_GROUP",
    "STATISTICS",
    "Codec",
    "Setting",
    "WeightCodec",
    "available_codecs",
    "get_codec",
    "get_weight_codec",
    "model_and_data_settings",
    "problem_settings",
    "register_codec",
    "check_start",
    "target_in",
]

#: what :attr:`WeightCodec.statistics` may name: what :meth:`WeightCodec.make_variants` receives per linear
STATISTICS = ("hessian", "hessian_diag", "activations", "none")

Settings = dict[str, Any]


@dataclass(frozen=True)
class Setting:
    """One setting of a ``compress`` run: a YAML key, a CLI option (``--key-with-dashes``) and a schema field.

    Args:
        name: the key (``snake_case``).
        default: its value when not given.
        field: its type, range and choices (checked before the model loads).
        help: what the CLI's ``--help`` says of it.
        strict: kinds that do not declare it refuse it (it changes what a run means, e.g. a budget).
        option: it is a CLI option of its own (``export`` and ``progress`` are switched off by ``--no-export``
            and ``--quiet`` instead).
        cli: extra keywords of its ``argparse`` option (e.g. ``choices``).
        instead_of: another setting this one replaces: giving both is refused with ``conflict``.
        conflict: the one-line message when both are given.
    """

    name: str
    default: Any
    field: Field
    help: str = ""
    strict: bool = False
    option: bool = True
    cli: Mapping[str, Any] | None = None
    instead_of: str | None = None
    conflict: str = ""


#: the settings of every weight codec (declared on :class:`WeightCodec`)
WEIGHT_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "search_tokens",
        None,
        Field("int", min=1, max=10**9, nullable=True),
        "calibration tokens of the fitness (default: the pool)",
    ),
    Setting("database", None, Field("str", nullable=True), "variant database directory (default: under the cache)"),
    Setting("random_n", 16, Field("int", min=1, max=10**6), "size of the best-of-N random baseline (16)"),
    Setting(
        "estimates",
        "fisher",
        Field("str", choices=("fisher", "layer")),
        "the per-unit error estimates EvoPress starts from and screens with: fisher (default; one forward and "
        "backward pass over the search pool, counted in the search's tokens; adds the dp-fisher baseline) or "
        "layer (the variant database's normalised layer errors, free)",
        cli={"choices": ["fisher", "layer"]},
    ),
    Setting(
        "ties",
        None,
        Field("str", choices=("engine", "none"), nullable=True),
        "units that share one level: engine (fused q/k/v, gate/up and a layer's experts of one fused parameter, as "
        "the engines of gptq and pack-quantized run them; their default) or none (every unit its own level: only "
        "with a format that can store it, e.g. dense)",
        cli={"choices": ["engine", "none"]},
    ),
)


class Codec(ABC):
    """One compression kind (see the module docstring). Subclasses set :attr:`name`."""

    #: registry name: ``levelsearch compress --method NAME`` and a database spec's ``"kind"``
    name: ClassVar[str] = ""
    #: what a unit's profile value is, for plots (``"sparsity"``, ``"bits"``, ``"dropped"`` ...)
    profile_label: ClassVar[str] = "level"
    #: how the journal identity names a start taken from a baseline (``"heuristic"``: ``best-heuristic:NAME``)
    start_label: ClassVar[str] = ""
    #: a ``--target`` that makes sense for this codec (examples and the conformance tests use it)
    example_target: ClassVar[float] = 0.5
    #: how an export writes the units (``levelsearch_compression.json``'s ``how``)
    export_how: ClassVar[str] = "dense weights"
    #: what ``--target`` means for this codec, for ``levelsearch compress --help`` (e.g. ``"bits per weight (3)"``)
    target_help: ClassVar[str] = "the codec's budget"
    #: ``--target`` when none is given (``None``: the run asks for one)
    default_target: ClassVar[float | None] = None
    #: the ``compress`` settings this kind adds to the shared ones (its keys, CLI options and schema fields:
    #: :mod:`levelsearch.adapters.run.settings` collects them from the registry)
    compress_settings: ClassVar[tuple[Setting, ...]] = ()
    #: the formats ``OUT/model`` can be written in, the default first: a format any codec may name
    #: (:data:`levelsearch.adapters.formats.WRITERS`) or one of its own, written by :meth:`write_format`
    formats: ClassVar[tuple[str, ...]] = ("dense",)

    def check_settings(self, settings: Settings) -> None:  # noqa: B027 (most codecs check nothing more)
        """The codec's own checks of ``compress`` settings, before the model loads (one-line ``ValueError``)."""

    @abstractmethod
    def make_problem(self, settings: Settings) -> Any:
        """The level problem of a ``compress`` run from its merged settings (``ValueError`` on a bad target)."""

    @abstractmethod
    def run_baselines(self, problem: Any, settings: Settings, cache: Any, tag: dict[str, str]) -> dict[str, Any]:
        """Every baseline on calibration data: name → ``{"levels", "calibration_kl", ...}`` (the rest goes
        into ``results.json``). ``cache`` is the run's cache directory, ``tag`` the problem's identity."""

    def baselines(self, problem: Any, *, fidelity: int, seed: int) -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
        """Codec-specific baselines: name → ``(levels, what was chosen)``, on calibration data only."""
        return {}

    @abstractmethod
    def results_fields(self, problem: Any, settings: Settings) -> dict[str, Any]:
        """What ``results.json`` says of the problem besides the common fields (its units ...)."""

    def plot(self, problem: Any, assignments: dict[str, np.ndarray], path: Any, methods: dict[str, Any]) -> Any:
        """Draw every method's per-unit profile into ``path`` (``methods``: their results, for the legend)."""
        from ..run.plots import plot_profile

        ppl = {n: m["heldout_ppl"] for n, m in methods.items()}
        return plot_profile(problem, assignments, path, ppl, label=self.profile_label)

    def summary(self, problem: Any, levels: np.ndarray) -> dict[str, Any]:
        """What a report says of an assignment besides its levels and profile (e.g. ``average``)."""
        return {}

    def export(self, problem: Any, levels: np.ndarray, out: Any, info: dict[str, Any] | None = None) -> Any:
        """Write ``problem``'s model at ``levels`` as a Hugging Face directory the stock engines load (the
        problem's export state, plus ``levelsearch_compression.json``); returns its path."""
        from ..run.export import export_model

        return export_model(problem, levels, out, {"how": self.export_how, **(info or {})})

    def write_format(
        self, format: str, problem: Any, levels: np.ndarray, out: Any, info: dict[str, Any] | None = None
    ) -> Any:
        """Write ``problem``'s model at ``levels`` in ``format``, one of :attr:`formats` that no shared writer
        has (default: :meth:`export`, the dense form the stock architecture loads); returns its path."""
        return self.export(problem, levels, out, {**(info or {}), "loader": "transformers"})

    def settings_of_run(self, identity: dict[str, Any], results: dict[str, Any]) -> Settings:
        """This codec's settings of a finished run (``levelsearch export`` rebuilds its problem with them) beyond
        those its problem's ``identity`` records under their own keys: read from the identity (what the run's
        journal recorded, the problem's ``describe()``; empty when the journal has none) or ``results``
        (as ``results.json`` has them). Default: none."""
        return {}

    def verify_export(self, problem: Any, levels: np.ndarray, path: Any) -> float:
        """Largest absolute logit difference between the exported directory and ``problem``'s model at ``levels``."""
        return float(problem.verify_export(levels, path))


class WeightCodec(Codec):
    """A codec whose variants of a unit are precomputed into a variant database (see the module docstring)."""

    #: the calibration statistic :meth:`make_variants` receives per unit (one of :data:`STATISTICS`)
    statistics: ClassVar[str] = "hessian"
    #: spec entries besides ``kind`` and their defaults (:meth:`make_spec` takes these as options)
    default_spec: ClassVar[dict[str, Any]] = {}
    #: budget options and their defaults (:meth:`make_space` reads them; default: ``tol``, the band's width
    #: in budget units per weight)
    budget_defaults: ClassVar[dict[str, Any]] = {"tol": 0.02}
    compress_settings: ClassVar[tuple[Setting, ...]] = WEIGHT_SETTINGS
    #: formats whose engines run units with one scheme (vLLM's fused q/k/v and gate/up layers, fused-MoE kernels
    #: over a layer's experts): a run that may write one ties those units (``ties="engine"``) by default, and
    #: ``--ties none`` is refused with them
    tied_formats: ClassVar[tuple[str, ...]] = ("gptq", "pack-quantized")
    #: the names of :meth:`baselines` (the codec's own), so that ``--start NAME`` is checked before the model loads
    own_baselines: ClassVar[tuple[str, ...]] = ()

    def check_settings(self, settings: Settings) -> None:
        """``--ties none`` with an export in a format of :attr:`tied_formats` (given, or the codec's default) is
        one line."""
        check_start(settings, ("uniform", *self.own_baselines, "dp", "dp-fisher"))
        fmt = settings.get("format") or self.formats[0]
        if settings.get("ties") == "none" and settings.get("export", True) and fmt in self.tied_formats:
            raise ValueError(
                f"--ties none cannot be written as --format {fmt}: its engines run fused q/k/v, gate/up and a "
                "layer's experts with one scheme; use --ties engine, or --format dense"
            )

    # ------------------------------------------------------------------ units, levels, costs
    def units(self, model: Any) -> list[tuple[str, int, Any]]:
        """``(module path, decoder layer, module)`` of every unit of ``model``, in layer order (default:
        every ``nn.Linear`` and GPT-2 ``Conv1D`` of every decoder layer). A unit is a module with a 2-D
        ``weight``, read and written as ``out × in`` through :mod:`levelsearch.adapters.model.units`."""
        from ..model.calibration import linear_units

        return list(linear_units(model))

    def make_spec(self, model: Any, target: float, **options: Any) -> dict[str, Any]:
        """The database spec for ``model`` at ``target``: ``{"kind": name, **default_spec, **options}`` (JSON values).

        Raises:
            ValueError: an option this codec does not know.
        """
        unknown = sorted(set(options) - set(self.default_spec))
        if unknown:
            takes = ", ".join(sorted(self.default_spec)) or "none"
            raise ValueError(f"the {self.name} codec has no option {unknown[0]!r}; it takes: {takes}")

        # as JSON has it (tuples become lists): a spec is compared with the one a database's manifest holds
        return dict(json.loads(json.dumps({"kind": self.name, **self.default_spec, **options})))

    @abstractmethod
    def check_spec(self, spec: dict[str, Any]) -> None:
        """``ValueError`` with a sentence when ``spec`` (a database spec of this kind) is not valid."""

    @abstractmethod
    def level_values(self, spec: dict[str, Any], numel: int) -> list[Any]:
        """The value of each level of a unit with ``numel`` weights, in level order (JSON-able)."""

    def amount(self, spec: dict[str, Any], value: Any, numel: int) -> float:
        """What a level of ``value`` keeps of the budget's quantity (zeros, bits, parameters) in a unit of
        ``numel`` weights: a unit's profile is ``amount / numel`` and an assignment's average
        ``Σ amount / Σ numel``. A codec whose amount depends on the unit's shape overrides
        :meth:`unit_amounts` instead."""
        raise NotImplementedError(f"codec {self.name!r} defines neither amount() nor unit_amounts()")

    def unit_amounts(self, spec: dict[str, Any], values: list[Any], shape: tuple[int, int]) -> list[float]:
        """The :meth:`amount` of every level of a unit of ``shape`` (``out × in``), in level order."""
        return [self.amount(spec, v, shape[0] * shape[1]) for v in values]

    def level_cost(self, spec: dict[str, Any], value: Any, numel: int) -> float:
        """The cost of a level in the level space (default: its amount, see :meth:`unit_costs`)."""
        return self.amount(spec, value, numel)

    def unit_costs(self, spec: dict[str, Any], values: list[Any], shape: tuple[int, int]) -> list[float]:
        """The cost of every level of a unit of ``shape`` in the level space (default: :meth:`level_cost`
        of each value when a codec overrides it, else the unit's amounts)."""
        if type(self).level_cost is WeightCodec.level_cost:
            return self.unit_amounts(spec, values, shape)
        return [self.level_cost(spec, v, shape[0] * shape[1]) for v in values]

    def make_space(self, costs: list[list[float]], numel: np.ndarray, target: float, options: dict[str, Any]) -> Any:
        """The level space of units with level ``costs`` and ``numel`` weights at ``target`` (default: the
        band ``[target − tol, target]`` of the average amount per weight, kept by repair)."""

        n = float(np.sum(numel))
        tol = float(options["tol"])
        return LevelSpace([len(c) for c in costs], costs=costs, total=float(target) * n, tol=tol * n)

    def settings_of_run(self, identity: dict[str, Any], results: dict[str, Any]) -> Settings:
        """The run's variant database and the fitness's calibration tokens, as its results record them."""
        if not isinstance(results.get("database"), dict):
            return {}
        return {"database": results["database"]["dir"], "search_tokens": results.get("search_tokens")}

    def check_budget(self, options: dict[str, Any]) -> None:
        """``ValueError`` (one line) for budget options :meth:`make_space` cannot take; called before the model
        loads (default: ``tol`` a number in [0, 1) when the codec has one)."""
        tol = options.get("tol", 0.0)
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0.0 <= float(tol) < 1.0:
            raise ValueError(f"the {self.name} budget's tol must be a number in [0, 1), got {tol!r}")

    def describe_budget(self, target: float, options: dict[str, Any]) -> dict[str, Any]:
        """What the problem's identity (``describe()``) says of the budget besides the spec."""
        return {"target": float(target), **options}

    def uniform_levels(self, problem: Any) -> np.ndarray | None:
        """The uniform baseline: of the assignments with one level index everywhere that meet the budget,
        the one with the lowest mean unit error; ``None`` when none meets it."""
        errors = np.nanmean(problem.layer_errors(), axis=0)
        for k in np.argsort(errors):
            lv = np.full(problem.space.n_units, int(k), dtype=np.int64)
            if problem.space.is_feasible(lv):
                return lv
        return None

    def dp_levels(self, problem: Any, *, seed: int, errors: np.ndarray | None = None) -> np.ndarray:
        """The DP baseline: knapsack on per-unit errors (assumed additive): ``errors``, by default the
        database's normalised output errors."""
        from ..weights.problem import dp_levels

        return dp_levels(problem, errors)

    # ------------------------------------------------------------------ variants
    @abstractmethod
    def make_variants(self, spec: dict[str, Any], w: Any, stats: Any, values: list[Any]) -> list[Any]:
        """Every level's variant of the fp32 weight ``w`` (``out × in``) given the unit's calibration
        statistic ``stats`` (what :attr:`statistics` names: the raw Hessian ``in × in``, its diagonal,
        the inputs ``tokens × in``, or ``None``)."""

    def select_statistics(self, hessian: Any, activations: Any) -> Any:
        """What :meth:`make_variants` receives of a unit's raw Hessian and inputs, as :attr:`statistics` says."""
        chosen = {"hessian": hessian, "activations": activations, "none": None}
        if self.statistics == "hessian_diag":
            return hessian.diagonal().clone()
        if self.statistics not in chosen:
            raise ValueError(f"codec {self.name!r}: statistics must be one of {', '.join(STATISTICS)}")
        return chosen[self.statistics]

    @abstractmethod
    def keeps_level(self, spec: dict[str, Any], value: Any, variant: Any) -> bool:
        """Whether ``variant`` is what a level of ``value`` claims (its exact zero count, codes within its bits ...).

        The codec conformance test checks it for every variant a codec makes: the budget is computed
        from level values, so a variant that does not keep its level would make the budget a lie.
        """

    @abstractmethod
    def encode(self, variant: Any) -> dict[str, Any]:
        """The compact tensors of a variant (named parts, stored under ``unit/level/part``)."""

    @abstractmethod
    def decode(self, spec: dict[str, Any], value: Any, shape: tuple[int, int], part: Callable[[str], Any]) -> Any:
        """A stored variant of level ``value`` as :meth:`apply_variant` takes it (the built-in codecs: its fp32
        ``out × in`` weight; a codec may return e.g. factors, with an ``apply_variant`` that uses them);
        ``part(name)`` reads one stored tensor. Decoded variants are cached (their tensors count)."""

    def dense(self, variant: Any) -> Any:
        """The fp32 weight a variant stands for (what its output error is measured on)."""
        return variant

    def apply_variant(self, module: Any, weight: Any) -> None:
        """Make the live ``module`` compute with ``weight``: what :meth:`decode` returned, or the dense fp32
        weight when the dense model is restored (default: copy the ``out × in`` tensor into ``module.weight``,
        in the module's layout: :func:`~levelsearch.adapters.model.units.set_unit_weight`). A codec that changes
        how the module computes (factors, a hook) must restore it on the dense weight."""
        from ..model.units import set_unit_weight

        set_unit_weight(module, weight)

    def layer_statistics(self, spec: dict[str, Any], pairs: list[tuple[Any, Any]]) -> dict[str, Any]:
        """Statistics of one decoder layer from its ``(weight, Hessian)`` pairs, kept in the manifest."""
        return {}

    @abstractmethod
    def export_entry(self, spec: dict[str, Any], value: Any, numel: int) -> dict[str, Any]:
        """What ``levelsearch_compression.json`` records of a unit at level ``value``."""

    # ------------------------------------------------------------------ a compress run
    def make_problem(self, settings: Settings) -> Any:
        """The generic :class:`~levelsearch.adapters.weights.problem.WeightLevelProblem` of this codec."""
        from ..weights.problem import WeightLevelProblem

        return WeightLevelProblem(
            settings["model"], codec=self, target=self.check_target(settings), **problem_settings(settings)
        )

    def check_target(self, settings: Settings) -> float:
        """``settings["target"]`` checked for this codec (default: a number in (0, 1], e.g. a fraction kept)."""
        t = target_in(settings, 0.0, 1.0, f"a fraction in (0, 1] for --method {self.name}", open_ends=False)
        if t <= 0:
            raise ValueError(f"--target must be a fraction in (0, 1] for --method {self.name}, got {t!r}")
        return t

    def run_baselines(self, problem: Any, settings: Settings, cache: Any, tag: dict[str, str]) -> dict[str, Any]:
        """Uniform (when the target has one), the codec's own, DP on the database's normalised errors (``dp``)
        and on the problem's Fisher estimates (``dp-fisher``, when it measures them: they are the
        optimizer's prior too), and best-of-N random when no uniform exists; their calibration KL on the
        whole search pool."""

        from ..weights.problem import random_levels

        seed = int(settings["seed"])
        fid = min(int(settings["heuristic_tokens"]), problem.max_fidelity)
        base: dict[str, dict[str, Any]] = {}
        uni = problem.uniform_levels()
        if uni is not None:
            base["uniform"] = {"levels": uni, "seconds": 0.0}
        t = time.perf_counter()
        for name, (levels, chosen) in self.baselines(problem, fidelity=fid, seed=seed).items():
            base[name] = {"levels": levels, "seconds": time.perf_counter() - t, **chosen}
            t = time.perf_counter()
        base["dp"] = {"levels": self.dp_levels(problem, seed=seed), "seconds": time.perf_counter() - t}
        if problem.estimates == "fisher":
            t = time.perf_counter()
            lv = self.dp_levels(problem, seed=seed, errors=problem.unit_errors())
            base["dp-fisher"] = {
                "levels": lv,
                "seconds": time.perf_counter() - t,
                "forward_tokens": problem.fisher_tokens,
            }
        if uni is None:
            t = time.perf_counter()
            lv = random_levels(problem, n=int(settings.get("random_n", 16)), fidelity=fid, seed=seed)
            base["random"] = {"levels": lv, "seconds": time.perf_counter() - t}
        cal, _ = problem.score([b["levels"] for b in base.values()], "calibration")
        for b, v in zip(base.values(), cal):
            b["calibration_kl"] = float(v)
        return base

    def results_fields(self, problem: Any, settings: Settings) -> dict[str, Any]:
        db = problem.db
        info = {"dir": str(db.root), "bytes": db.size_bytes(), "spec": problem.spec}
        return {"units": problem.unit_names, "database": {**info, "build_seconds": db.manifest["build_seconds"]}}

    def summary(self, problem: Any, levels: np.ndarray) -> dict[str, Any]:
        """The profile (per-unit ``amount / numel``) and the average (``Σ amount / Σ numel``) of ``levels``."""
        return {"profile": problem.profile(levels).tolist(), "average": problem.average(levels)}


def target_in(settings: Settings, lo: float, hi: float, what: str, *, open_ends: bool = False) -> float:
    """``settings["target"]`` as a float after checking it is a number in ``[lo, hi]`` (``(lo, hi)`` if ``open_ends``).

    Raises:
        ValueError: ``--target must be {what}, got ...``.
    """
    t = settings["target"]
    ok = not isinstance(t, bool) and isinstance(t, (int, float))
    if ok:
        ok = lo < float(t) < hi if open_ends else lo <= float(t) <= hi
    if not ok:
        raise ValueError(f"--target must be {what}, got {t!r}")
    return float(t)


def check_start(settings: Settings, baselines: Sequence[str], label: str = "") -> None:
    """``settings["start"]`` names a start this run will have: unset, ``best-baseline`` / ``best-heuristic``,
    ``random`` (``uniform`` too for a ``label``-ed codec, as :func:`~levelsearch.adapters.run.pipeline.choose_start`
    reads it) or one of ``baselines``, checked before the model loads.

    Raises:
        ValueError: one line naming the bad start and the ones there are.
    """
    start = settings.get("start")
    known = ["best-heuristic", "best-baseline", "random", *(["uniform"] if label else []), *baselines]
    if start is not None and start not in known:
        raise ValueError(f"--start {start!r} is not a start of this run; one of: {', '.join(dict.fromkeys(known))}")


def model_and_data_settings(settings: Settings) -> dict[str, Any]:
    """The keyword arguments every LLM problem takes from ``compress`` settings besides the model and target."""
    return dict(
        data=settings["data"],
        seq_len=settings["seq_len"],
        calibration_tokens=settings["calibration_tokens"],
        heldout_tokens=settings["heldout_tokens"],
        top_k=settings["top_k"],
        device=settings["device"],
        dtype=settings["dtype"],
        threads=settings["threads"],
        seed=int(settings["seed"]),
    )


def problem_settings(settings: Settings) -> dict[str, Any]:
    """The keyword arguments every layer-wise weight problem takes from ``compress`` settings."""
    return dict(
        **model_and_data_settings(settings),
        database=settings.get("database"),
        search_tokens=settings.get("search_tokens"),
        estimates=settings.get("estimates") or "fisher",
        ties=settings.get("ties"),
        progress=bool(settings["progress"]),
    )
