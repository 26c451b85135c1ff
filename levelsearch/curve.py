"""Many budgets in one call: a size–quality curve (:func:`minimize_curve`).

    >>> import numpy as np
    >>> from levelsearch import LevelSpace, minimize_curve
    >>> errors = np.arange(8.0)
    >>> space = LevelSpace(2, n_units=8, total=2)            # the budget of each point replaces total
    >>> curve = minimize_curve(lambda lv: float(errors @ lv), space, [1, 2, 3], max_evaluations=200)
    >>> [p.best_value for p in curve.points]
    [0.0, 1.0, 3.0]

The budgets are searched in increasing order. The first starts as the optimizer would alone; every
next one starts from the previous budget's best assignment moved to its own budget by the space's
repair (level moves on random units until the total fits: the fewest changes that reach the
budget), so it begins close to a good assignment instead of from scratch. With a journal
directory, each budget's search is journaled in its own file there (``budget-<b>.db``; a journal
holds one run) and a call with the same arguments resumes: finished budgets are replayed from
their journals without calling the function, and the budget that was interrupted continues
exactly where it stopped. Because each start is a deterministic function of the previous budget's
result and the seed, a resumed curve is the curve an uninterrupted call gives.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .driver import Result, minimize
from .optimizer import get_optimizer
from .space import LevelSpace

__all__ = ["CurvePoint", "CurveResult", "check_budgets", "minimize_curve", "space_at"]


@dataclass
class CurvePoint:
    """One budget of a curve: its :func:`~levelsearch.minimize` result and where its search started.

    Attributes:
        budget: the budget (the space's ``total`` for this point).
        result: the search's :class:`~levelsearch.Result`.
        start: ``"default"`` (the optimizer's own start) or ``"neighbour"`` (the previous budget's best,
            repaired to this budget).
        start_levels: the assignment it started from, when ``"neighbour"``.
    """

    budget: float
    result: Result
    start: str
    start_levels: np.ndarray | None = None

    @property
    def best_levels(self) -> np.ndarray:
        return self.result.best_levels

    @property
    def best_value(self) -> float:
        return self.result.best_value


@dataclass
class CurveResult:
    """What :func:`minimize_curve` returns: one :class:`CurvePoint` per budget, in increasing budget order."""

    points: list[CurvePoint] = field(default_factory=list)

    @property
    def budgets(self) -> list[float]:
        return [p.budget for p in self.points]

    @property
    def best_values(self) -> list[float]:
        return [p.best_value for p in self.points]

    @property
    def n_evaluations(self) -> int:
        """Oracle evaluations over every budget (journal replays included, as :class:`~levelsearch.Result`)."""
        return sum(p.result.n_evaluations for p in self.points)

    @property
    def cost(self) -> float:
        """Fidelity spent over every budget."""
        return sum(p.result.cost for p in self.points)


def check_budgets(budgets: Any, what: str = "budgets") -> list[float]:
    """``budgets`` as a list of floats; ``ValueError`` naming the bad value when it is empty, not a sequence of
    finite numbers, unsorted or has a value twice (a curve's budgets are strictly increasing)."""
    if isinstance(budgets, (str, bytes)) or not isinstance(budgets, Sequence):
        raise ValueError(f"{what} must be a list of numbers in increasing order, got {budgets!r}")
    if len(budgets) == 0:
        raise ValueError(f"{what} is empty; give at least one budget")
    out: list[float] = []
    for b in budgets:
        if isinstance(b, bool) or not isinstance(b, (int, float, np.integer, np.floating)) or not math.isfinite(b):
            raise ValueError(f"{what}: {b!r} is not a finite number")
        if out and float(b) == out[-1]:
            raise ValueError(f"{what}: {float(b):g} is given twice; give each budget once")
        if out and float(b) < out[-1]:
            raise ValueError(f"{what}: {float(b):g} comes after {out[-1]:g}; give the budgets in increasing order")
        out.append(float(b))
    return out


def space_at(space: LevelSpace, budget: float | Mapping[Any, float]) -> LevelSpace:
    """A copy of ``space`` (levels, costs, groups, band width) with the budget ``total`` set to ``budget``.

    Raises:
        ValueError: ``budget`` is infeasible for the space (the message names the reachable range).
    """
    n = space.n_levels
    costs = [space.costs[i, : int(n[i])].tolist() for i in range(space.n_units)]
    groups = (
        None
        if space.n_groups == 1 and space.group_labels == ["all"]
        else [space.group_labels[g] for g in space.group_of.tolist()]
    )
    return LevelSpace(n.tolist(), costs=costs, total=budget, groups=groups, tol=space.tol)


def _takes_start(optimizer: str) -> bool:
    """Whether the optimizer (or a class it passes its options on to) takes a ``start``."""
    factory = get_optimizer(optimizer)
    classes = factory.__mro__ if isinstance(factory, type) else (factory,)
    for c in classes:
        init = c.__dict__.get("__init__") if isinstance(c, type) else c
        try:
            if init is not None and "start" in inspect.signature(init).parameters:
                return True
        except (TypeError, ValueError):
            continue
    return False


def minimize_curve(
    fn: Callable[..., float],
    space: LevelSpace | Callable[[float], LevelSpace],
    budgets: Sequence[float],
    optimizer: str = "evopress",
    *,
    journal: str | Path | None = None,
    seed: int = 0,
    options: Mapping[str, Any] | None = None,
    **minimize_kwargs: Any,
) -> CurveResult:
    """Minimise ``fn`` at every budget of ``budgets``, each search started from the previous budget's result.

    Args:
        fn: the fitness, as :func:`~levelsearch.minimize` takes it (lower is better).
        space: a :class:`LevelSpace` whose ``total`` each budget replaces (:func:`space_at`), or a
            function ``budget -> LevelSpace``.
        budgets: the budgets, strictly increasing (:func:`check_budgets`).
        optimizer: a registered optimizer's name; a fresh one searches each budget.
        journal: a directory for the journals (one per budget, ``budget-<b>.db``); the same call again
            resumes (see the module docstring). Default: no journal.
        seed: seed of every search and of the repairs that move a result to the next budget.
        options: the optimizer's options, for every budget; after the first budget an optimizer that takes
            a ``start`` gets the previous best, repaired (an explicit ``start`` holds for the first only).
        minimize_kwargs: the rest of :func:`~levelsearch.minimize`'s keyword arguments (``max_evaluations``,
            ``max_cost``, ``evaluator``, ``progress`` ...), per budget.

    Returns:
        A :class:`CurveResult`, one point per budget in order.

    Raises:
        ValueError: bad budgets (empty, unsorted, repeated, not finite, infeasible for the space), an
            optimizer given as an instance (each budget needs a fresh one), and what
            :func:`~levelsearch.minimize` raises.
    """
    if not isinstance(optimizer, str):
        raise ValueError("minimize_curve takes the optimizer's name (each budget needs a fresh optimizer)")
    values = check_budgets(budgets)
    spaces = [space(b) if callable(space) and not isinstance(space, LevelSpace) else space_at(space, b) for b in values]
    folder = None if journal is None else Path(journal)
    if folder is not None:
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"journal {folder} is a file; minimize_curve takes a directory (one journal per budget)")
        folder.mkdir(parents=True, exist_ok=True)
    takes_start = _takes_start(optimizer)
    curve = CurveResult()
    prev: np.ndarray | None = None
    for b, sp in zip(values, spaces):
        opts = dict(options or {})
        start, start_levels = "default", None
        if prev is not None and takes_start:
            start_levels = sp.repair(prev, np.random.default_rng([int(seed), len(curve.points)]))
            opts["start"] = start_levels.tolist()
            start = "neighbour"
        result = minimize(
            fn,
            sp,
            optimizer,
            seed=seed,
            options=opts,
            journal=None if folder is None else folder / f"budget-{b:g}.db",
            identity={"curve_budget": b, "curve_start": start},
            **minimize_kwargs,
        )
        curve.points.append(CurvePoint(b, result, start, start_levels))
        if result.stopped_by == "interrupted":
            break
        prev = np.asarray(result.best_levels, dtype=np.int64)
    return curve
