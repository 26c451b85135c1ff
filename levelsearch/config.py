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
to change.
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

__all__ = ["RunConfig", "load_config", "parse_config", "safe_load", "read_text", "check_finite"]

#: Budget limits (the driver's): a billion evaluations, 10^15 fidelity units; more is a typo.
MAX_EVALUATIONS = 10**9
MAX_COST = 1e15


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e6`` and ``2.5e8`` as numbers.

    PyYAML follows YAML 1.1, where a float needs a dot and a signed exponent, so ``max_cost: 2.0e8``
    would arrive as the string ``"2.0e8"``; budgets in tokens are written that way all the time.
    """


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


def safe_load(text: str) -> Any:
    """Parse YAML safely (no Python objects), reading ``1e6``-style numbers as floats."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


_TOP_KEYS = {"problem", "optimizer", "seed", "budget", "evaluator", "max_consecutive_failures", "name"}
_BUDGET_KEYS = {"max_evaluations", "max_cost"}
_EVALUATOR_KINDS = {"serial", "ray"}
_EVALUATOR_KEYS = {
    "serial": {"kind", "retries"},
    "ray": {"kind", "retries", "workers", "resources_per_worker", "address", "max_worker_restarts"},
}


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
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file {p} does not exist")
    try:
        data = safe_load(read_text(p, "config file"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ValueError(f"{p}: not valid YAML{where}") from None
    return parse_config(data, source=str(p))


def read_text(path: Path, what: str = "file") -> str:
    """The UTF-8 text of ``path``; a binary or unreadable file is a ``ValueError`` that names it."""
    try:
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


def _int(x: Any, what: str, minimum: int = 0) -> int:
    if isinstance(x, bool) or not isinstance(x, int) or x < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {x!r}")
    return x


def _parse_evaluator(ev: Any, source: str) -> dict[str, Any]:
    if isinstance(ev, str):
        ev = {"kind": ev}
    if not isinstance(ev, Mapping) or ev.get("kind", "serial") not in _EVALUATOR_KINDS:
        raise ValueError(f"{source}: evaluator.kind must be one of {sorted(_EVALUATOR_KINDS)}")
    ev = {"kind": "serial", **dict(ev)}
    allowed = _EVALUATOR_KEYS[ev["kind"]]
    bad = sorted(set(ev) - allowed)
    if bad:
        raise ValueError(
            f"{source}: unknown evaluator key {bad[0]!r} for kind {ev['kind']}; allowed: {', '.join(sorted(allowed))}"
        )
    _int(ev.get("retries", 0), f"{source}: evaluator.retries")
    if "workers" in ev:
        _int(ev["workers"], f"{source}: evaluator.workers", 1)
    res = ev.get("resources_per_worker")
    if res is not None and (
        not isinstance(res, Mapping)
        or not all(
            isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
            for k, v in res.items()
        )
    ):
        raise ValueError(
            f"{source}: evaluator.resources_per_worker must map resource names to numbers >= 0, "
            f"e.g. {{CPU: 1, GPU: 1}}, got {res!r}"
        )
    address = ev.get("address")
    if address is not None and (not isinstance(address, str) or not address):
        raise ValueError(f"{source}: evaluator.address must be a Ray address such as 'auto' or 'ray://host:10001'")
    if "max_worker_restarts" in ev:
        _int(ev["max_worker_restarts"], f"{source}: evaluator.max_worker_restarts")
    return ev


def parse_config(data: Any, source: str = "config") -> RunConfig:
    """Validate a config given as a mapping (see :func:`load_config`)."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{source}: a run config must be a mapping with at least 'problem' and 'budget'")
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise ValueError(f"{source}: unknown key {unknown[0]!r}; allowed keys: {', '.join(sorted(_TOP_KEYS))}")
    if "problem" not in data:
        raise ValueError(f"{source}: missing 'problem' (e.g. problem: {{kind: linear}})")
    problem = data["problem"]
    if isinstance(problem, str):
        problem = {"kind": problem}
    if not isinstance(problem, Mapping) or "kind" not in problem:
        raise ValueError(f"{source}: 'problem' must be a mapping with a 'kind' (see `levelsearch problems`)")
    check_finite(dict(problem), f"{source}: problem")
    opt = data.get("optimizer", "evopress")
    if isinstance(opt, str) and opt:
        opt_name, options = opt, {}
    elif isinstance(opt, Mapping) and isinstance(opt.get("name"), str) and opt["name"]:
        opt_name = str(opt["name"])
        options = {k: v for k, v in opt.items() if k != "name"}
    else:
        raise ValueError(f"{source}: 'optimizer' must be a name or a mapping with a 'name'")
    check_finite(options, f"{source}: optimizer")
    seed = _int(data.get("seed", 0), f"{source}: seed")
    budget = data.get("budget")
    if not isinstance(budget, Mapping) or not budget:
        raise ValueError(f"{source}: missing 'budget' (e.g. budget: {{max_evaluations: 5000}})")
    bad = sorted(set(budget) - _BUDGET_KEYS)
    if bad:
        raise ValueError(f"{source}: unknown budget key {bad[0]!r}; use max_evaluations and/or max_cost")
    max_eval = budget.get("max_evaluations")
    if max_eval is not None:
        max_eval = _int(max_eval, f"{source}: budget.max_evaluations", 1)
        if max_eval > MAX_EVALUATIONS:
            raise ValueError(
                f"{source}: budget.max_evaluations={max_eval} is beyond any run (at most {MAX_EVALUATIONS:.0e}); "
                "check the number"
            )
    max_cost = budget.get("max_cost")
    if max_cost is not None:
        if (
            isinstance(max_cost, bool)
            or not isinstance(max_cost, (int, float))
            or not math.isfinite(max_cost)
            or max_cost <= 0
        ):
            raise ValueError(f"{source}: budget.max_cost must be a positive number, got {max_cost!r}")
        if max_cost > MAX_COST:
            raise ValueError(
                f"{source}: budget.max_cost={max_cost:g} is beyond any run (at most {MAX_COST:.0e}); check the number"
            )
        max_cost = float(max_cost)
    if max_eval is None and max_cost is None:
        raise ValueError(f"{source}: budget needs max_evaluations or max_cost")
    ev = _parse_evaluator(data.get("evaluator", {"kind": "serial"}), source)
    mcf = _int(data.get("max_consecutive_failures", 100), f"{source}: max_consecutive_failures", 1)
    name = data.get("name")
    if name is not None and not isinstance(name, str):
        raise ValueError(f"{source}: name must be a string")
    return RunConfig(
        problem=dict(problem),
        optimizer=opt_name,
        optimizer_options=dict(options),
        seed=seed,
        max_evaluations=max_eval,
        max_cost=max_cost,
        evaluator=ev,
        max_consecutive_failures=mcf,
        name=name,
    )
