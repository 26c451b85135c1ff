"""Typed settings of ``levelsearch compress``, shared by the CLI, the YAML config and Python.

    from levelsearch.adapters.cli.settings import CompressSettings
    from levelsearch.adapters.cli.compress import run_compress

    run_compress(CompressSettings(method="sparsity", target=0.5, out="runs/sparse", generations=50))

A YAML config has the same keys (``-`` or ``_``), and so do the CLI options (``--search-minutes``).
Keys a codec does not use are ignored by it (``whole_blocks`` and ``budget`` are ``drop``'s;
``search_tokens``, ``database``, ``random_n`` and ``estimates`` the weight codecs'), except ``tol``,
``target_bytes`` and ``extra_tensors`` (``gguf``'s): a method that does not take them refuses them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from levelsearch.schema import Field, Schema, validate

__all__ = ["COMPRESS_SCHEMA", "CompressSettings"]

_TOKENS = Field("int", min=1, max=10**9)
_OPT_STR = Field("str", nullable=True)
_FREE = Field("any", nullable=True)  # a codec's own form (a list or a comma string, a size with a unit): it parses it


def _enough_tokens(cfg: dict[str, Any]) -> str | None:
    if cfg["calibration_tokens"] < cfg["seq_len"]:
        return "calibration_tokens must hold at least one sequence of seq_len tokens"
    return None


#: The declared schema of every ``compress`` setting (the run and bench configs' schemas live in
#: :mod:`levelsearch.config`, on the same :mod:`levelsearch.schema`): types, ranges and choices, checked
#: before the model loads; what depends on the codec (``target``'s range, ``types``) the codec checks.
COMPRESS_SCHEMA = Schema(
    {
        "model": Field("str"),  # an empty name: the model loader says so
        "method": Field("str", min=1),
        "target": Field("number"),
        "out": _OPT_STR,
        "seed": Field("int", min=0, max=2**63 - 1),
        "schedule": Field("str"),
        "offspring": Field("int", min=1, max=10**4, nullable=True),
        "optimizer": Field("str", choices=("evopress", "evopress-ref")),
        "generations": _TOKENS,
        "search_minutes": Field("number", min=0, max=1e6, exclusive_min=True, nullable=True),
        "start": _OPT_STR,
        "calibration_tokens": _TOKENS,
        "heldout_tokens": _TOKENS,
        "seq_len": _TOKENS,
        "top_k": _TOKENS,
        "heuristic_tokens": _TOKENS,
        "heuristics": Field("list", items=Field("str"), nullable=True),
        "whole_blocks": Field("bool"),
        "budget": Field("str"),
        "data": _OPT_STR,
        "threads": Field("int", min=1, max=10**9, nullable=True),
        "device": _OPT_STR,
        "dtype": _OPT_STR,
        "export": Field("bool"),
        "format": _OPT_STR,
        "progress": Field("bool"),
        "search_tokens": Field("int", min=1, max=10**9, nullable=True),
        "database": _OPT_STR,
        "random_n": Field("int", min=1, max=10**6),
        "estimates": Field("str", choices=("fisher", "layer")),
        "types": _FREE,
        "tol": _FREE,
        "target_bytes": _FREE,
        "extra_tensors": _FREE,
    },
    check=_enough_tokens,
)


@dataclass
class CompressSettings:
    """Every setting of a ``compress`` run, with its default.

    Attributes:
        model: ``"smollm2"`` (offline default), a model directory, GGUF file or hub id.
        method: a registered codec (``drop``, ``sparsity``, ``quant``, ``joint``, plug-ins).
        target: the codec's budget (drop: fraction of sub-blocks; sparsity: average sparsity;
            quant / joint: bits per weight).
        out: output directory (results.json, profile.png, journal.db, model/).
        seed: seed of the data split, the baselines and the search.
        schedule: EvoPress selection schedule (``cpu``, ``drop``, ``super-fast``); offspring overrides its λ.
        optimizer: ``evopress`` or ``evopress-ref``; generations and search_minutes stop it.
        start: ``best-heuristic`` / ``best-baseline``, ``random`` or a baseline's name.
        calibration_tokens, heldout_tokens, seq_len, top_k, heuristic_tokens: data sizes, tokens.
        heuristics: the ``drop`` heuristics to run (default all); whole_blocks, budget: ``drop``'s units and budget.
        data, threads, device, dtype: documents, torch threads, device and dtype.
        export, progress: write ``OUT/model``; show progress.
        format: the format ``OUT/model`` is written in (default: the method's first; the names of
            ``levelsearch export --format``, :data:`~levelsearch.adapters.formats.FORMATS`).
        search_tokens, database, random_n: weight codecs' fitness pool, database directory, random baseline size.
        estimates: weight codecs' per-unit error estimates (EvoPress's prior and the ``dp-fisher`` baseline):
            ``fisher`` (default) or ``layer`` (:class:`~levelsearch.adapters.weights.problem.WeightLevelProblem`).
        types: ``gguf``'s ggml quant types (a list or ``"Q2_K,Q4_K,..."``; default Q2_K..Q6_K, Q8_0).
        tol: ``gguf``'s band width, a fraction of the budget in (0, 0.5) (default 0.005: the band is
            ``[target·(1−tol), target]``); other methods refuse it.
        target_bytes: ``gguf``'s budget in bytes of the searched tensors instead of ``target`` (an integer
            or a string with a unit: ``"93.5MB"``, ``"80MiB"``); other methods refuse it.
        extra_tensors: ``gguf``'s tensors outside the decoder layers to search too (``token_embd``, ``output``;
            a list or ``"token_embd,output"``; default none); other methods refuse it.
    """

    model: str = "smollm2"
    method: str = "drop"
    target: float = 0.25
    out: str | None = None
    seed: int = 0
    schedule: str = "cpu"
    offspring: int | None = None
    optimizer: str = "evopress"
    generations: int = 400
    search_minutes: float | None = None
    start: str | None = "best-heuristic"
    calibration_tokens: int = 4096
    heldout_tokens: int = 4096
    seq_len: int = 256
    top_k: int = 256
    heuristic_tokens: int = 2048
    heuristics: list[str] | None = None
    whole_blocks: bool = False
    budget: str = "per-type"
    data: str | None = None
    threads: int | None = None
    device: str | None = None
    dtype: str | None = None
    export: bool = True
    format: str | None = None
    progress: bool = True
    search_tokens: int | None = None
    database: str | None = None
    random_n: int = 16
    estimates: str = "fisher"
    types: list[str] | str | None = None
    tol: float | str | None = None
    target_bytes: int | str | None = None
    extra_tensors: list[str] | str | None = None

    @classmethod
    def keys(cls) -> list[str]:
        """The setting names, in declaration order."""
        return [f.name for f in fields(cls)]

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str = "settings") -> CompressSettings:
        """Settings from a mapping (``-`` in keys read as ``_``); the others keep their defaults.

        Raises:
            ValueError: an unknown key, naming ``source`` (e.g. ``config run.yaml``) and the known keys.
        """
        given = {str(k).replace("-", "_"): v for k, v in data.items()}
        unknown = sorted(set(given) - set(cls.keys()))
        if unknown:
            raise ValueError(f"{source} has unknown key {unknown[0]!r}; keys are: {', '.join(cls.keys())}")
        return cls(**given)

    def check(self, source: str = "settings") -> None:
        """Every setting against :data:`COMPRESS_SCHEMA`: one-line ``ValueError`` naming the key."""
        validate(self.to_dict(), COMPRESS_SCHEMA, where=source)

    def to_dict(self) -> dict[str, Any]:
        """The settings as the plain dict the pipeline and a codec read."""
        return asdict(self)
