"""Settings of ``levelsearch compress``: the shared ones, each kind's own, their schema and typed values.

    from levelsearch.adapters.run.settings import CompressSettings
    from levelsearch.adapters.cli.compress import run_compress

    run_compress(CompressSettings(method="sparsity", target=0.5, out="runs/sparse", generations=50))

Every setting is declared once as a :class:`Setting`: its key (a YAML key, ``-`` or ``_``), default,
:class:`~levelsearch.schema.Field` (type, range, choices) and help. :data:`SHARED_SETTINGS` are those of
every run (model, data, search, export); a compression kind adds its own on its codec
(:attr:`~levelsearch.adapters.codecs.base.Codec.compress_settings`), and :func:`declared_settings` collects
them from the codec registry, so a kind registered by entry point brings its keys, CLI options and schema
with it. The CLI options are made from the same declarations (:mod:`levelsearch.adapters.cli.settings`).

A kind's setting is ignored by the kinds that do not declare it, unless it is ``strict``: then the
others refuse it (one line naming the kinds that take it).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import Any

from levelsearch.schema import Field, Schema, validate

from ..codecs.base import Setting
from ..codecs.registry import CODECS, available_codecs

__all__ = [
    "COMPRESS_SCHEMA",  # noqa: F822 (built on use by __getattr__)
    "CompressSettings",
    "SHARED_SETTINGS",
    "Setting",
    "compress_schema",
    "declared_settings",
    "kind_settings",
    "takers",
    "with_default_target",
]


_TOKENS = Field("int", min=1, max=10**9)
_OPT_STR = Field("str", nullable=True)


def target_option(text: str) -> float | str:
    """``--target``'s value: a number, or a comma list kept as text for the run to check item by item (one line
    naming a bad value: :func:`levelsearch.adapters.run.curve.targets_of`)."""
    import argparse

    if "," in text:
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (or a comma list of numbers: 3,3.5,4)") from None


def _tokens(name: str, default: int, help: str) -> Setting:
    return Setting(name, default, _TOKENS, help)


#: the settings of every ``compress`` run, in the order ``--help`` and error messages list them
SHARED_SETTINGS: tuple[Setting, ...] = (
    Setting("model", "smollm2", Field("str"), "smollm2 (offline default), a model directory, model file or hub id"),
    Setting("method", "drop", Field("str", min=1), "a registered codec"),
    Setting(
        "target",
        None,
        Field("any", nullable=True),  # a number, or several (a list, or a comma string): the codec checks each
        "the codec's budget (default: each codec's value in parentheses); several, comma-separated "
        "(3,3.5,4), run them all on one model load (a curve)",
        cli={"type": target_option},
    ),
    Setting("out", None, _OPT_STR, "output directory (results.json, profile.png, journal.db, model/)"),
    Setting("seed", 0, Field("int", min=0, max=2**63 - 1), "seed of the data split, the baselines and the search"),
    Setting(
        "schedule",
        "cpu",
        Field("str"),
        "selection schedule: cpu (default) or a named one of levelsearch.adapters.run.schedules",
    ),
    Setting("offspring", None, Field("int", min=1, max=10**4, nullable=True), "override λ of the schedule"),
    Setting(
        "optimizer",
        "evopress",
        Field("str", choices=("evopress", "evopress-ref")),
        "evopress (default) or evopress-ref (the reference algorithm, for comparisons)",
    ),
    _tokens("generations", 400, "maximum EvoPress generations (default 400)"),
    Setting(
        "search_minutes",
        None,
        Field("number", min=0, max=1e6, exclusive_min=True, nullable=True),
        "also stop the search after this many minutes",
    ),
    Setting(
        "patience",
        20,
        Field("int", min=0, max=10**6),
        "the stopping rule: stop once this many generations in a row gained less than --min-improvement "
        "(default 20; 0 turns it off: the search runs all --generations)",
    ),
    Setting(
        "min_improvement",
        1e-3,
        Field("number", min=0, max=0.999999),
        "the relative gain on its final step's data a generation must make to count for --patience (default 0.001)",
    ),
    Setting(
        "accept_p",
        None,
        Field("number", min=0, max=1, exclusive_min=True, nullable=True),
        "keep the search's result over its start only when it beats it on the calibration pool's sequences beyond "
        "chance, a one-sided paired t-test at this p (e.g. 0.05); default: the result is always kept",
    ),
    Setting("start", "best-heuristic", _OPT_STR, "best-heuristic (default), random, or a heuristic name"),
    _tokens("calibration_tokens", 4096, "calibration pool size (default 4096)"),
    _tokens("heldout_tokens", 4096, "held-out set size (default 4096)"),
    _tokens("seq_len", 256, "tokens per sequence (default 256)"),
    _tokens("top_k", 256, "teacher tokens kept per position (default 256)"),
    _tokens("heuristic_tokens", 2048, "calibration tokens for heuristic statistics (default 2048)"),
    Setting("data", None, _OPT_STR, "calibration/held-out documents: .txt, .jsonl, a directory (default pydoc topics)"),
    Setting("threads", None, Field("int", min=1, max=10**9, nullable=True), "torch CPU threads"),
    Setting("device", None, _OPT_STR, "cuda or cpu (default: cuda when present)"),
    Setting("dtype", None, _OPT_STR, "float32, bfloat16, float16 (default fp32 on CPU)"),
    Setting("export", True, Field("bool"), "write OUT/model", option=False),
    Setting("format", None, _OPT_STR, "format of OUT/model, as levelsearch export's"),
    Setting("progress", True, Field("bool"), "show progress", option=False),
)


def _enough_tokens(cfg: dict[str, Any]) -> str | None:
    if cfg["calibration_tokens"] < cfg["seq_len"]:
        return "calibration_tokens must hold at least one sequence of seq_len tokens"
    return None


def _loaded_codecs() -> Iterator[tuple[str, Any]]:
    """``(name, codec class)`` of every registered codec that loads (a plug-in that does not says so when it runs)."""
    for name in available_codecs():
        try:
            yield name, CODECS.get(name)
        except (ImportError, ValueError):
            continue


def kind_settings(method: str) -> tuple[Setting, ...]:
    """The settings the codec ``method`` declares (none for an unknown name or a codec that does not load)."""
    if method not in available_codecs():
        return ()
    try:
        return tuple(getattr(CODECS.get(method), "compress_settings", ()))
    except (ImportError, ValueError):
        return ()


def takers(key: str) -> list[str]:
    """The codecs that declare the setting ``key``, by name."""
    return [name for name, cls in _loaded_codecs() if any(s.name == key for s in getattr(cls, "compress_settings", ()))]


def declared_settings() -> dict[str, Setting]:
    """Every setting by key: :data:`SHARED_SETTINGS`, then each registered codec's, by codec name.

    Raises:
        ValueError: two codecs (or a codec and the shared settings) declare one key differently.
    """
    out: dict[str, Setting] = {s.name: s for s in SHARED_SETTINGS}
    owner = {s.name: "the shared settings" for s in SHARED_SETTINGS}
    for name, cls in _loaded_codecs():
        for s in getattr(cls, "compress_settings", ()):
            if s.name in out and out[s.name] != s:
                raise ValueError(f"codec {name!r} declares the setting {s.name!r} differently from {owner[s.name]}")
            out.setdefault(s.name, s)
            owner.setdefault(s.name, f"codec {name!r}")
    return out


def compress_schema() -> Schema:
    """The schema of every declared setting (:func:`declared_settings`): types, ranges and choices, checked
    before the model loads; what depends on the codec (``target``'s range, a kind's parsing) the codec checks."""
    return Schema({k: s.field for k, s in declared_settings().items()}, check=_enough_tokens)


def __getattr__(name: str) -> Any:
    if name == "COMPRESS_SCHEMA":  # built on use: a codec registered later adds its settings
        return compress_schema()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class CompressSettings:
    """Every setting of a ``compress`` run, with its default (see the module docstring).

    ``CompressSettings(method="quant", target=3)``: any declared key as a keyword, the others at their
    defaults; each is an attribute (``settings.target``). The shared ones:

    Attributes:
        model: ``"smollm2"`` (offline default), a model directory, model file or hub id.
        method: a registered codec (``levelsearch.adapters.codecs.available_codecs()``).
        target: the codec's budget (its ``target_help`` says what it means).
        out: output directory (results.json, profile.png, journal.db, model/).
        seed: seed of the data split, the baselines and the search.
        schedule: EvoPress selection schedule; offspring overrides its λ.
        optimizer: ``evopress`` or ``evopress-ref``; generations and search_minutes stop it.
        start: ``best-heuristic`` / ``best-baseline``, ``random`` or a baseline's name.
        calibration_tokens, heldout_tokens, seq_len, top_k, heuristic_tokens: data sizes, tokens.
        data, threads, device, dtype: documents, torch threads, device and dtype.
        export, progress: write ``OUT/model``; show progress.
        format: the format ``OUT/model`` is written in (default: the codec's first of its ``formats``).

    Raises:
        ValueError: a key no setting declares (the known keys are listed).
    """

    def __init__(self, **given: Any) -> None:
        self._check_keys(given, "settings")
        values = {k: copy.deepcopy(given.get(k, s.default)) for k, s in declared_settings().items()}
        object.__setattr__(self, "_values", values)

    @staticmethod
    def _check_keys(given: Mapping[str, Any], source: str) -> None:
        keys = list(declared_settings())
        unknown = sorted(set(given) - set(keys))
        if unknown:
            raise ValueError(f"{source} has unknown key {unknown[0]!r}; keys are: {', '.join(keys)}")

    def __getattr__(self, name: str) -> Any:
        values = self.__dict__.get("_values", {})
        if name in values:
            return values[name]
        raise AttributeError(f"CompressSettings has no setting {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        self._check_keys({name: value}, "settings")
        self._values[name] = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CompressSettings) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]  # mutable, like the dataclass it replaces

    def __repr__(self) -> str:
        return f"CompressSettings({', '.join(f'{k}={v!r}' for k, v in self._values.items())})"

    @classmethod
    def keys(cls) -> list[str]:
        """The setting names, the shared ones first, then each codec's."""
        return list(declared_settings())

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str = "settings") -> CompressSettings:
        """Settings from a mapping (``-`` in keys read as ``_``); the others keep their defaults.

        Raises:
            ValueError: an unknown key, naming ``source`` (e.g. ``config run.yaml``) and the known keys.
        """
        given = {str(k).replace("-", "_"): v for k, v in data.items()}
        cls._check_keys(given, source)
        return cls(**given)

    def check(self, source: str = "settings") -> None:
        """Every setting against :func:`compress_schema`: one-line ``ValueError`` naming the key."""
        validate(self.to_dict(), compress_schema(), where=source)

    def to_dict(self) -> dict[str, Any]:
        """The settings as the plain dict the pipeline and a codec read."""
        return copy.deepcopy(dict(self._values))


def with_default_target(codec: Any, cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` with ``target`` set to ``codec.default_target`` when neither it nor a setting replacing it (a
    byte budget) was given; ``ValueError`` (one line) when the codec has no default."""
    if cfg.get("target") is not None:
        return cfg
    if any(s.instead_of == "target" and cfg.get(s.name) is not None for s in kind_settings(codec.name)):
        return cfg
    if codec.default_target is None:
        raise ValueError(f"--method {codec.name} needs a --target ({codec.target_help})")
    return {**cfg, "target": codec.default_target}
