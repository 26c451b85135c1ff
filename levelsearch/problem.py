"""Problems: a level space plus a black-box oracle, and the problem registry.

A problem's ``evaluate(levels, fidelity, sample)`` returns a float, lower is
better. *Fidelity* is how much data the oracle may use (tokens, samples); the
*sample* seed picks which data, so every evaluation is reproducible. Problems
without a notion of fidelity ignore both.

Problems are built from configs (``{"kind": NAME, ...params}``) through a
registry filled by this package and the ``levelsearch.problems`` entry-point
group, so a Ray worker or a resumed run can rebuild the same oracle.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .optimizer import Request
from .registry import Registry
from .space import LevelSpace

__all__ = [
    "Problem",
    "fidelity_schedule",
    "FunctionProblem",
    "register_problem",
    "get_problem_factory",
    "available_problems",
    "make_problem",
]


class Problem:
    """Base class: a :class:`LevelSpace` and an oracle.

    Attributes a user may rely on:
        name: short name used in reports.
        space: the level space.
        optimum: the known optimal value (``None`` when unknown).
        optimum_levels: an optimal assignment when known.
        max_fidelity: the highest fidelity the oracle accepts (``None`` when it
            has no fidelity); a request with ``fidelity=None`` uses it.
        uses_fidelity: whether values depend on fidelity and sample at all.
        replay_tolerance: relative difference allowed when a resume measures journaled
            evaluations again (``None``: exact without fidelity, ``1e-2`` with it; see
            :func:`~levelsearch.driver.spot_check_tolerance`). A problem whose values are not
            bitwise reproducible at a fixed fidelity and sample declares its own.
    """

    name: str = "problem"
    optimum: float | None = None
    optimum_levels: np.ndarray | None = None
    max_fidelity: int | None = None
    uses_fidelity: bool = False
    replay_tolerance: float | None = None

    def __init__(self, space: LevelSpace) -> None:
        self.space = space

    def evaluate(self, levels: np.ndarray, fidelity: int | None = None, sample: int | None = None) -> float:
        """The fitness of ``levels`` (lower is better).

        Subclasses define this, or ``evaluate_many(requests) -> list[float]`` (a batch oracle),
        or both; with only ``evaluate_many`` this evaluates a batch of one.

        Raises:
            TypeError: if the subclass defines neither.
        """
        batch = getattr(self, "evaluate_many", None)
        if batch is None:
            raise TypeError(
                f"{type(self).__name__} must define evaluate(levels, fidelity, sample) or evaluate_many(requests)"
            )
        return float(batch([Request(np.asarray(levels, dtype=np.int64), fidelity, sample)])[0])

    def true_value(self, levels: np.ndarray) -> float | None:
        """The noise-free value of ``levels`` when it is cheap to know (synthetic problems), else ``None``."""
        return None

    def unit_errors(self) -> np.ndarray | None:
        """Per-unit, per-level error estimates, or ``None`` when the problem has none (the default).

        A ``(n_units, max_levels)`` array whose entry ``[i, l]`` estimates how much unit ``i``
        at level ``l`` alone hurts (single-drop KLs, normalised layer errors: dp's input).
        Optimizers that want them (``wants_unit_errors``, e.g. :class:`~levelsearch.EvoPress`)
        get them from :func:`~levelsearch.minimize` before their first ask, as the
        surrogate's prior and, through it, a start candidate (the knapsack optimum of the
        estimates). Whatever measuring them costs (forward tokens) is the problem's to
        count, like any evaluation's: report it in comparisons.
        """
        return None

    def default_schedule(self, optimizer: str = "evopress") -> dict[str, Any] | None:
        """EvoPress options of the selection schedule this problem suggests, or ``None`` (the default
        without a fidelity: one step at full fidelity).

        :func:`~levelsearch.minimize` (and so ``levelsearch run``, ``bench`` and Ray) gives them to
        ``evopress`` and ``evopress-ref`` when the user's options name no ``steps`` or ``preset``; any
        key the user gives wins. A problem with a fidelity and a pool (``max_fidelity``) gets
        :func:`fidelity_schedule` of its pool; adapters size theirs to their pool and device.
        """
        if not self.uses_fidelity or not self.max_fidelity:
            return None
        return fidelity_schedule(int(self.max_fidelity), optimizer)

    def default_start(self) -> np.ndarray | None:
        """A feasible assignment to start EvoPress from when the user gives no ``start`` (``None``: the
        optimizer's own start; :class:`~levelsearch.EvoPress` then starts from the knapsack optimum
        of :meth:`unit_errors` when the problem has them)."""
        return None

    def cost_of(self, fidelity: int | None) -> float:
        """Budget units an evaluation at ``fidelity`` costs (its fidelity; 1 without fidelity)."""
        if not self.uses_fidelity:
            return 1.0
        if fidelity is None:
            return float(self.max_fidelity or 1)
        return float(fidelity)

    def describe(self) -> dict[str, Any]:
        """JSON-able identity of the problem (checked when a journal is resumed)."""
        return {"name": self.name, "space": self.space.to_dict()}


def fidelity_schedule(pool: int, optimizer: str = "evopress", first: int | None = None) -> dict[str, Any]:
    """A three-step selection schedule for a pool of ``pool`` fidelity units (tokens, samples).

    Screen at ``first`` (default ``pool // 16``) keeping 3, confirm at ``4 × first`` keeping 1, decide
    on the whole pool, where the parent competes on the same data: for 4,096 tokens of 256-token
    sequences, ``[(256, 3), (1024, 1), (4096, 1)]``. Steps that would not be smaller than the next are
    left out. ``evopress`` evaluates 8 offspring a generation, the best of 64 mutants by its surrogate;
    ``evopress-ref`` evaluates 16 random offspring.
    """
    pool = int(pool)
    lo = max(1, pool // 16 if first is None else min(int(first), pool))
    steps: list[tuple[int, int]] = []
    for fid, keep in ((lo, 3), (min(4 * lo, pool), 1)):
        if fid < pool and (not steps or fid > steps[-1][0]):
            steps.append((fid, keep))
    steps.append((pool, 1))
    opts: dict[str, Any] = {"offspring": 16, "steps": steps, "max_switches": 3}
    if optimizer == "evopress":
        opts.update(offspring=8, screen=8)
    return opts


class FunctionProblem(Problem):
    """Wrap a plain function ``fn(levels)`` or ``fn(levels, fidelity, seed)``.

    The signature is detected: a function that accepts three positional
    arguments gets fidelity and sample seed and is treated as multi-fidelity.
    """

    def __init__(
        self, fn: Callable[..., float], space: LevelSpace, *, max_fidelity: int | None = None, name: str | None = None
    ) -> None:
        super().__init__(space)
        if not callable(fn):
            raise ValueError(f"fitness must be callable, got {type(fn).__name__}")
        self.fn = fn
        self.uses_fidelity = _takes_fidelity(fn)
        self.max_fidelity = max_fidelity
        self.name = str(name or getattr(fn, "__qualname__", "function"))

    def evaluate(self, levels: np.ndarray, fidelity: int | None = None, sample: int | None = None) -> float:
        if self.uses_fidelity:
            return float(self.fn(levels, fidelity, sample))
        return float(self.fn(levels))


def _takes_fidelity(fn: Callable[..., Any]) -> bool:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    positional = 0
    for p in sig.parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            return True
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            positional += 1
    return positional >= 3


ProblemFactory = Callable[..., Problem]
ENTRY_POINT_GROUP = "levelsearch.problems"


def _import_built_in_problems() -> None:
    from . import synthetic  # noqa: F401  (registers the built-in problems)


#: the problem kinds: the synthetic ones, then the entry-point group (the adapters' ``llm-*``, plug-ins)
PROBLEMS: Registry[ProblemFactory] = Registry(
    "problem",
    ENTRY_POINT_GROUP,
    unknown="unknown problem kind {name!r}; known: {known}",
    extra="llm",
    preload=_import_built_in_problems,
)


def register_problem(name: str, factory: ProblemFactory | str, *, replace: bool = False) -> None:
    """Register a problem factory (called with the config's keyword parameters).

    Raises:
        ValueError: if the name is taken and ``replace`` is false.
    """
    PROBLEMS.register(name, factory, replace=replace)


def available_problems() -> list[str]:
    """Names of every registered problem kind, sorted."""
    return PROBLEMS.names()


def get_problem_factory(name: str) -> ProblemFactory:
    """The factory registered under ``name`` (``ValueError`` if unknown or not installed)."""
    return PROBLEMS.get(name)


def make_problem(config: Mapping[str, Any]) -> Problem:
    """Build a problem from ``{"kind": NAME, **params}``.

    Raises:
        ValueError: unknown kind, or parameters the factory does not take.
    """
    if not isinstance(config, Mapping) or "kind" not in config:
        raise ValueError("problem config needs a 'kind' (see `levelsearch problems`)")
    params = {k: v for k, v in config.items() if k != "kind"}
    factory = get_problem_factory(str(config["kind"]))
    _check_params(factory, params, str(config["kind"]))
    return factory(**params)


def _check_params(factory: Callable[..., Any], params: Mapping[str, Any], kind: str) -> None:
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return
    allowed = {n for n, p in sig.parameters.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(f"problem {kind!r} has no parameter {unknown[0]!r}; it takes: {', '.join(sorted(allowed))}")
    missing = [
        n
        for n, p in sig.parameters.items()
        if p.default is p.empty and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and n not in params
    ]
    if missing:
        raise ValueError(f"problem {kind!r} needs parameter {missing[0]!r}")
