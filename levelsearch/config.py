"""Run configs: YAML files that say which problem, optimizer, budget and evaluator to use.

A run config looks like::

    problem: {kind: linear, n_units: 64, n_levels: 2, total: 16, seed: 0}
    optimizer: {name: evopress, offspring: 16}   # or just: evopress
    seed: 0
    budget: {max_evaluations: 20000}             # and/or max_cost (fidelity units)
    evaluator: {kind: serial, retries: 0}        # or {kind: ray, workers: 2, ...}
    max_consecutive_failures: 100

``evaluator.retries`` is how many extra times an evaluation that raised an
exception is attempted (NaN/inf are not retried); after
``max_consecutive_failures`` failed evaluations in a row the run stops with an
error. The Ray evaluator takes ``workers`` (actors, default 1),
``resources_per_worker`` (e.g. ``{CPU: 1, GPU: 1}``), ``address`` (join a
cluster, e.g. ``auto``; default: start Ray locally) and ``max_worker_restarts``
(default ``4 * workers``).

Every error a user can make is a ``ValueError`` with one sentence saying what
to change, naming the key: configs are checked against a declared schema
(:data:`RUN_SCHEMA`, :data:`BUDGET_SCHEMA`, :data:`OPTIMIZER_OPTIONS`; the
:class:`~levelsearch.schema.Schema` machinery is in :mod:`levelsearch.schema`,
which says why it is our own). YAML is read bounded: duplicate keys are refused,
aliases are limited (:data:`MAX_YAML_ALIASES`, :data:`MAX_YAML_NODES` once
expanded) and a file over :data:`MAX_YAML_BYTES` is not read.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .schema import ConfigError, Field, Schema, check_name, validate

__all__ = [
    "RunConfig",
    "load_config",
    "parse_config",
    "safe_load",
    "load_yaml",
    "read_text",
    "check_finite",
    "Field",
    "Schema",
    "ConfigError",
    "validate",
    "check_name",
    "RUN_SCHEMA",
    "BENCH_SCHEMA",
    "BUDGET_SCHEMA",
    "OPTIMIZER_OPTIONS",
]

#: Budget limits (the driver's): a billion evaluations, 10^15 fidelity units; more is a typo.
MAX_EVALUATIONS = 10**9
MAX_COST = 1e15
#: YAML limits: a config is a few hundred bytes; these stop a runaway file or an alias bomb fast.
MAX_YAML_BYTES = 1 << 20
MAX_YAML_ALIASES = 100
MAX_YAML_NODES = 100_000


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that reads ``1e6`` as a number, refuses duplicate keys and bounds aliases.

    PyYAML follows YAML 1.1, where a float needs a dot and a signed exponent, so ``max_cost: 2.0e8``
    would arrive as the string ``"2.0e8"``; budgets in tokens are written that way all the time.
    PyYAML keeps the last of two equal keys without a word; here that is an error naming the key and
    its line. Aliases (``*name``) are counted and the document's size with every alias expanded is
    bounded, so a "billion laughs" file fails at once instead of filling the memory of whoever walks it.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_YAML_ALIASES:
                line = self.peek_event().start_mark.line + 1
                raise _YamlLimit(f"more than {MAX_YAML_ALIASES} aliases (*name) at line {line}; write the values out")
        return super().compose_node(parent, index)

    def get_single_node(self) -> Any:
        node = super().get_single_node()
        if node is not None and self._aliases:
            _expanded_size(node, {}, set())
        return node

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue  # merged keys (<<) may be overridden, as YAML says
            key = self.construct_object(key_node)
            try:
                dup = key in seen
            except TypeError:
                continue  # an unhashable key: the constructor says so
            if dup:
                raise _YamlLimit(f"duplicate key {key!r} at line {key_node.start_mark.line + 1}; give each key once")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class _YamlLimit(ValueError):
    pass


def _expanded_size(node: Any, memo: dict[int, int], open_: set[int]) -> int:
    """Nodes in ``node`` with every alias expanded; refuses more than ``MAX_YAML_NODES`` and cycles."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in open_:
        raise _YamlLimit(f"a recursive alias at line {node.start_mark.line + 1}; a config cannot contain itself")
    open_.add(key)
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(v, memo, open_) for v in node.value)
    elif isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(k, memo, open_) + _expanded_size(v, memo, open_) for k, v in node.value)
    open_.discard(key)
    if size > MAX_YAML_NODES:
        raise _YamlLimit(
            f"aliases expand to more than {MAX_YAML_NODES} values (from line {node.start_mark.line + 1}); "
            "write the config out without them"
        )
    memo[key] = size
    return size


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def safe_load(text: str, source: str = "YAML") -> Any:
    """Parse YAML safely (no Python objects), reading ``1e6``-style numbers as floats.

    Raises:
        ValueError: a duplicate key, too many aliases or values, a document over
            ``MAX_YAML_BYTES`` or nested too deeply (one line starting with ``source``).
        yaml.YAMLError: not YAML at all (its mark says where).
    """
    if len(text) > MAX_YAML_BYTES:
        raise ValueError(f"{source}: larger than {MAX_YAML_BYTES} bytes; a config is a short text file")
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except _YamlLimit as exc:
        raise ValueError(f"{source}: {exc}") from None
    except RecursionError:
        raise ValueError(f"{source}: nested too deeply; a config is a few levels of mappings and lists") from None


def load_yaml(path: str | Path, what: str = "config") -> Any:
    """The YAML document in ``path`` (bounded, see :func:`safe_load`); every failure is one-line ``ValueError``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable, too large, or not valid YAML (naming the file and the line).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} file {p} does not exist")
    try:
        return safe_load(read_text(p, f"{what} file"), source=str(p))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ValueError(f"{p}: not valid YAML{where}") from None


#: options that several optimizers take, bounded: a typo such as ``offspring: 1000000000`` must be an
#: error, not a run that never finishes. Other options are checked by the optimizer itself.
OPTIMIZER_OPTIONS = Schema(
    {
        "offspring": Field("int", min=1, max=100_000),
        "batch": Field("int", min=1, max=100_000),
        "max_switches": Field("int", min=1, max=100_000),
        "init_candidates": Field("int", min=1, max=100_000),
        "screen": Field("int", min=1, max=100_000),
        "max_extra_probes": Field("int", min=0, max=1_000_000),
        "max_generations": Field("int", min=1, max=MAX_EVALUATIONS),
        "budget": Field("int", min=1, max=MAX_EVALUATIONS),
        "fidelity": Field("int", min=1, max=10**15, nullable=True),
        "init_fidelity": Field("int", min=1, max=10**15, nullable=True),
    },
    extra=Field("any"),
)

BUDGET_SCHEMA = Schema(
    {
        "max_evaluations": Field("int", min=1, max=MAX_EVALUATIONS),
        "max_cost": Field("number", min=0, exclusive_min=True, max=MAX_COST),
    },
    one_of=("max_evaluations", "max_cost"),
)

_RAY_ONLY = ("workers", "resources_per_worker", "address", "max_worker_restarts")


def _serial_has_no_ray_keys(ev: dict[str, Any]) -> str | None:
    bad = [k for k in _RAY_ONLY if k in ev]
    if ev["kind"] == "serial" and bad:
        return f"key {bad[0]!r} is for kind ray, not serial (serial takes: kind, retries)"
    return None


EVALUATOR_SCHEMA = Schema(
    {
        "kind": Field("str", choices=("serial", "ray"), default="serial"),
        "retries": Field("int", min=0, max=1000, default=0),
        "workers": Field("int", min=1, max=100_000),
        "resources_per_worker": Field(
            "mapping", schema=Schema(extra=Field("number", min=0, max=1e6)), example="{CPU: 1, GPU: 1}"
        ),
        "address": Field("str", min=1, max=1000, example="auto or ray://host:10001"),
        "max_worker_restarts": Field("int", min=0, max=1_000_000),
    },
    check=_serial_has_no_ray_keys,
)

PROBLEM_SCHEMA = Schema({"kind": Field("str", required=True, min=1, example="kind: linear")}, extra=Field("any"))

RUN_SCHEMA = Schema(
    {
        "problem": Field(
            "mapping", required=True, schema=PROBLEM_SCHEMA, shorthand="kind", example="problem: {kind: linear}"
        ),
        "optimizer": Field(
            "mapping",
            schema=Schema({"name": Field("str", required=True, min=1), **OPTIMIZER_OPTIONS.fields}, extra=Field("any")),
            shorthand="name",
            default={"name": "evopress"},
            example="optimizer: evopress",
        ),
        "seed": Field("int", min=0, max=2**63 - 1, default=0),
        "budget": Field("mapping", required=True, schema=BUDGET_SCHEMA, example="budget: {max_evaluations: 5000}"),
        "evaluator": Field("mapping", schema=EVALUATOR_SCHEMA, shorthand="kind", default={"kind": "serial"}),
        "max_consecutive_failures": Field("int", min=1, max=MAX_EVALUATIONS, default=100),
        "name": Field("str", nullable=True, max=200),
    }
)


_SECONDS = Field("number", min=0, exclusive_min=True, max=1e7, nullable=True)
_TARGET_RELATIVE = Field("number", min=0, max=1e6)

_BENCH_OPTIMIZER = Schema(
    {
        "name": Field("str", required=True, min=1),
        "label": Field("name"),
        "options": Field("mapping", schema=OPTIMIZER_OPTIONS, nullable=True),
        "max_seconds": _SECONDS,
    }
)

_BENCH_PROBLEM = Schema(
    {
        "kind": Field("str", required=True, min=1, example="{kind: linear, n_units: 64}"),
        "label": Field("name"),
        "budget": Field("mapping", schema=BUDGET_SCHEMA),
        "target_relative": _TARGET_RELATIVE,
        "options": Field(
            "mapping", nullable=True, schema=Schema(extra=Field("mapping", schema=OPTIMIZER_OPTIONS, nullable=True))
        ),
    },
    extra=Field("any"),
)

#: the most (optimizer, problem, seed) runs one bench may hold
MAX_BENCH_RUNS = 100_000

BENCH_SCHEMA = Schema(
    {
        "name": Field("str", max=200),
        "seeds": Field(
            "list",
            items=Field("int", min=0, max=2**32 - 1),
            min_items=1,
            max_items=1000,
            unique=True,
            default=[0, 1, 2],
        ),
        "budget": Field("mapping", schema=BUDGET_SCHEMA, example="budget: {max_evaluations: 1000}"),
        "max_seconds": _SECONDS,
        "target_relative": _TARGET_RELATIVE,
        "checkpoints": Field(
            "list",
            items=Field("number", min=0, exclusive_min=True, max=1),
            min_items=1,
            max_items=100,
            unique=True,
            default=[0.1, 0.25, 0.5, 1.0],
            example="checkpoints: [0.1, 0.5, 1.0]",
        ),
        "optimizers": Field(
            "list",
            required=True,
            min_items=1,
            max_items=1000,
            items=Field("mapping", schema=_BENCH_OPTIMIZER, shorthand="name"),
            example="optimizers: [evopress, random]",
        ),
        "problems": Field(
            "list",
            required=True,
            min_items=1,
            max_items=1000,
            items=Field("mapping", schema=_BENCH_PROBLEM, shorthand="kind"),
            example="problems: [{kind: linear, n_units: 64}]",
        ),
    }
)


@dataclass
class RunConfig:
    """A validated run config (see the module docstring for the YAML form)."""

    problem: dict[str, Any]
    optimizer: str
    optimizer_options: dict[str, Any]
    seed: int = 0
    max_evaluations: int | None = None
    max_cost: float | None = None
    evaluator: dict[str, Any] = field(default_factory=lambda: {"kind": "serial"})
    max_consecutive_failures: int = 100
    name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        opt: dict[str, Any] = {"name": self.optimizer, **self.optimizer_options}
        budget: dict[str, Any] = {}
        if self.max_evaluations is not None:
            budget["max_evaluations"] = self.max_evaluations
        if self.max_cost is not None:
            budget["max_cost"] = self.max_cost
        out = {
            "problem": self.problem,
            "optimizer": opt,
            "seed": self.seed,
            "budget": budget,
            "evaluator": self.evaluator,
            "max_consecutive_failures": self.max_consecutive_failures,
        }
        if self.name:
            out["name"] = self.name
        return out

    def identity(self) -> dict[str, Any]:
        """What must not change between a run and its resume (the evaluator and budget may)."""
        return {
            "problem": self.problem,
            "optimizer": self.optimizer,
            "options": self.optimizer_options,
            "seed": self.seed,
        }


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a YAML run config.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable YAML or an invalid config (one clear sentence).
    """
    return parse_config(load_yaml(path), source=str(path))


def read_text(path: Path, what: str = "file", limit: int = MAX_YAML_BYTES) -> str:
    """The UTF-8 text of ``path``; a binary, unreadable or larger than ``limit`` bytes file is a
    ``ValueError`` that names it."""
    try:
        if path.stat().st_size > limit:
            raise ValueError(f"{what} {path} is larger than {limit} bytes; give a YAML config (a short text file)")
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{what} {path} is not a UTF-8 text file (binary?); give a YAML file") from None
    except IsADirectoryError:
        raise ValueError(f"{what} {path} is a directory; give a YAML file") from None
    except OSError as exc:
        raise ValueError(f"cannot read {what} {path} ({exc.strerror})") from None


def check_finite(value: Any, where: str) -> None:
    """Refuse NaN and infinities anywhere in a (nested) setting, naming where (``ValueError``):
    they make budgets and schedules lie. Mappings, lists, tuples, numpy arrays and scalars are looked into."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            check_finite(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_finite(v, f"{where}[{i}]")
    elif isinstance(value, np.ndarray):
        if value.dtype.kind in "fc" and not np.isfinite(value).all():
            raise ValueError(f"{where} must hold finite numbers only")
    elif isinstance(value, (float, np.floating)) and not math.isfinite(value):
        raise ValueError(f"{where} must be a finite number, got {value!r}")


def parse_config(data: Any, source: str = "config") -> RunConfig:
    """Validate a config given as a mapping against :data:`RUN_SCHEMA` (see :func:`load_config`).

    Raises:
        ConfigError: one line naming the key, e.g. ``run.yaml: budget.max_evaluations: must be an integer ...``.
    """
    if data is None:
        data = {}
    cfg = validate(data, RUN_SCHEMA, where=source)
    opt = dict(cfg["optimizer"])
    budget = cfg["budget"]
    max_cost = budget.get("max_cost")
    return RunConfig(
        problem=cfg["problem"],
        optimizer=opt.pop("name"),
        optimizer_options=opt,
        seed=cfg["seed"],
        max_evaluations=budget.get("max_evaluations"),
        max_cost=None if max_cost is None else float(max_cost),
        evaluator=cfg["evaluator"],
        max_consecutive_failures=cfg["max_consecutive_failures"],
        name=cfg.get("name"),
    )
