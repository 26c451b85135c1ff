"""The codec contract and the codec registry.

A **codec** is one compression kind. It says

- which level problem it plugs into and how a ``levelsearch compress`` run builds it from the
  settings (:meth:`Codec.make_problem`; the target's meaning and range are the codec's);
- which baselines besides uniform / DP / random it brings (:meth:`Codec.baselines`);
- how a level assignment reads in a report (:meth:`Codec.summary`, :attr:`Codec.profile_label`).

A :class:`WeightCodec` is a codec whose unit is a linear layer's weight and whose variants are
made once and stored in a :class:`~levelsearch.adapters.database.VariantDatabase`. It also says

- what its levels are for a unit of ``numel`` weights (:meth:`WeightCodec.level_values`: the
  value of a level is what its cost is computed from: zeros, bits, ``[zeros, bits]``);
- how to make every level's variant of a weight from the dense weight and its calibration
  Hessian (:meth:`WeightCodec.make_variants`, with the kernels of :mod:`..kernels`);
- how to store a variant compactly and load it back (:meth:`WeightCodec.encode`,
  :meth:`WeightCodec.decode`), and the dense weight it stands for (:meth:`WeightCodec.dense`);
- per-layer statistics its baselines need, computed while the database is built
  (:meth:`WeightCodec.layer_statistics`);
- what an exported unit records (:meth:`WeightCodec.export_entry`, :attr:`WeightCodec.export_how`).

The registry maps a name (``--method NAME``, and a database spec's ``"kind"``) to a codec class:
the built-in ones, then every entry point of the group ``levelsearch.codecs``
(``name = "package.module:CodecClass"``); a name taken twice is an error, never a silent shadow.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from importlib import metadata
from typing import Any, ClassVar

import numpy as np

__all__ = [
    "ENTRY_POINT_GROUP",
    "Codec",
    "WeightCodec",
    "available_codecs",
    "get_codec",
    "get_weight_codec",
    "model_and_data_settings",
    "problem_settings",
    "register_codec",
    "target_in",
]

ENTRY_POINT_GROUP = "levelsearch.codecs"

Settings = dict[str, Any]


class Codec(ABC):
    """One compression kind (see the module docstring). Subclasses set :attr:`name`."""

    #: registry name: ``levelsearch compress --method NAME`` and a database spec's ``"kind"``
    name: ClassVar[str] = ""
    #: what a level's profile value is, for plots (``"sparsity"``, ``"bits"`` ...)
    profile_label: ClassVar[str] = "level"
    #: how the journal identity names a start taken from a baseline (``"heuristic"``: ``best-heuristic:NAME``)
    start_label: ClassVar[str] = ""
    #: a ``--target`` that makes sense for this codec (examples and the conformance tests use it)
    example_target: ClassVar[float] = 0.5

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

    @abstractmethod
    def plot(self, problem: Any, assignments: dict[str, np.ndarray], path: Any, methods: dict[str, Any]) -> Any:
        """Draw the profile of every method's assignment into ``path`` (``methods``: their results)."""

    def summary(self, problem: Any, levels: np.ndarray) -> dict[str, Any]:
        """What a report says of an assignment besides its levels and profile (e.g. ``average``)."""
        return {}

    @abstractmethod
    def export(self, problem: Any, levels: np.ndarray, out: Any, info: dict[str, Any] | None = None) -> Any:
        """Write ``problem``'s model at ``levels`` as a directory the stock engines load; returns its path."""

    def verify_export(self, problem: Any, levels: np.ndarray, path: Any) -> float:
        """Largest absolute logit difference between the exported directory and ``problem``'s model at ``levels``."""
        return float(problem.verify_export(levels, path))


class WeightCodec(Codec):
    """A codec whose variants of a linear layer are precomputed into a variant database."""

    #: how an exported unit's weight is written (``levelsearch_compression.json``'s ``how``)
    export_how: ClassVar[str] = "dense weights"

    def export(self, problem: Any, levels: np.ndarray, out: Any, info: dict[str, Any] | None = None) -> Any:
        """Every unit written as the dense weight its variant stands for, plus ``levelsearch_compression.json``."""
        from ..weightsearch import export_levels

        return export_levels(problem, levels, out, info)

    def run_baselines(self, problem: Any, settings: Settings, cache: Any, tag: dict[str, str]) -> dict[str, Any]:
        """Uniform (when the target has one), the codec's own, DP on the per-unit errors, and best-of-N
        random when no uniform exists; their calibration KL on the whole search pool."""
        import time

        from ..weightsearch import random_levels

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

    def plot(self, problem: Any, assignments: dict[str, np.ndarray], path: Any, methods: dict[str, Any]) -> Any:
        from ..levelcompress import plot_levels

        ppl = {n: m["heldout_ppl"] for n, m in methods.items()}
        return plot_levels(problem, assignments, path, ppl, label=self.profile_label)

    def summary(self, problem: Any, levels: np.ndarray) -> dict[str, Any]:
        """The profile (per-unit sparsity, bits ...) of ``levels``; subclasses add their average."""
        return {"profile": problem.profile(levels).tolist()}

    def dp_levels(self, problem: Any, *, seed: int) -> np.ndarray:
        """The DP baseline: knapsack on the problem's per-unit errors (assumed additive)."""
        from ..weightsearch import dp_levels

        return dp_levels(problem)

    @abstractmethod
    def check_spec(self, spec: dict[str, Any]) -> None:
        """``ValueError`` with a sentence when ``spec`` (a database spec of this kind) is not valid."""

    @abstractmethod
    def level_values(self, spec: dict[str, Any], numel: int) -> list[Any]:
        """The value of each level of a unit with ``numel`` weights, in level order (JSON-able)."""

    @abstractmethod
    def make_variants(self, spec: dict[str, Any], w: Any, h: Any, values: list[Any]) -> list[Any]:
        """Every level's variant of the fp32 weight ``w`` (``out × in``) given its raw Hessian ``h``."""

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
        """The fp32 weight of a stored variant of level ``value``; ``part(name)`` reads one stored tensor."""

    def dense(self, variant: Any) -> Any:
        """The fp32 weight a variant stands for (what its output error is measured on)."""
        return variant

    def layer_statistics(self, spec: dict[str, Any], pairs: list[tuple[Any, Any]]) -> dict[str, Any]:
        """Statistics of one decoder layer from its ``(weight, Hessian)`` pairs, kept in the manifest."""
        return {}

    @abstractmethod
    def export_entry(self, spec: dict[str, Any], value: Any, numel: int) -> dict[str, Any]:
        """What ``levelsearch_compression.json`` records of a unit at level ``value``."""


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
        progress=bool(settings["progress"]),
    )


_BUILT_IN: dict[str, str] = {
    "drop": "levelsearch.adapters.codecs.drop:DropCodec",
    "sparsity": "levelsearch.adapters.codecs.sparsity:SparsityCodec",
    "quant": "levelsearch.adapters.codecs.quant:QuantCodec",
    "joint": "levelsearch.adapters.codecs.joint:JointCodec",
}
_REGISTRY: dict[str, type[Codec] | str] = dict(_BUILT_IN)
_LOADED = False


def register_codec(name: str, codec: type[Codec] | str, *, replace: bool = False) -> None:
    """Register a codec class (or ``"module:Class"``, imported on first use) under ``name``.

    Raises:
        ValueError: ``name`` is taken by another codec and ``replace`` is false.
    """
    if not replace and name in _REGISTRY and _REGISTRY[name] != codec:
        raise ValueError(f"a codec named {name!r} is already registered; pick another name or replace=True")
    _REGISTRY[name] = codec


def _load_entry_points() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _REGISTRY and _REGISTRY[ep.name] != ep.value:
            raise ValueError(f"entry point {ep.name!r} = {ep.value!r} collides with the registered codec of that name")
        _REGISTRY[ep.name] = ep.value


def available_codecs() -> list[str]:
    """Names of every registered codec (built in and from entry points), sorted."""
    _load_entry_points()
    return sorted(_REGISTRY)


def get_codec(name: str) -> Codec:
    """A fresh instance of the codec registered under ``name``.

    Raises:
        ValueError: an unknown name (the known ones are listed) or an entry point that is not a codec.
    """
    _load_entry_points()
    if name not in _REGISTRY:
        raise ValueError(f"unknown compression method {name!r}; available: {', '.join(available_codecs())}")
    target = _REGISTRY[name]
    if isinstance(target, str):
        module_name, _, attr = target.partition(":")
        target = getattr(__import__(module_name, fromlist=[attr]), attr)
        _REGISTRY[name] = target
    if not (isinstance(target, type) and issubclass(target, Codec)):
        raise ValueError(f"codec {name!r} is {target!r}, not a subclass of levelsearch.adapters.codecs.Codec")
    return target()


def get_weight_codec(kind: Any) -> WeightCodec:
    """The codec of a variant database's ``kind``.

    Raises:
        ValueError: ``kind`` names no registered codec with a variant database (those are listed).
    """
    codec = get_codec(str(kind)) if str(kind) in available_codecs() else None
    if not isinstance(codec, WeightCodec):
        names = [n for n in available_codecs() if isinstance(get_codec(n), WeightCodec)]
        raise ValueError(f"database kind must be one of {', '.join(names)}, got {kind!r}")
    return codec
