"""The ask/tell protocol every optimizer implements, and the optimizer registry.

An optimizer proposes *batches* of :class:`Request` objects (levels, fidelity,
sample seed); the driver evaluates them and tells the values back in the same
order. Optimizers must be deterministic given their seed and the values they are
told: resuming a run replays the journal through a fresh optimizer.

Other packages add optimizers through the ``levelsearch.optimizers`` entry-point
group (``name = "module:Class"``); the core never imports them.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .notes import NoteTaker
from .registry import Registry
from .space import LevelSpace

__all__ = [
    "Request",
    "Optimizer",
    "register_optimizer",
    "get_optimizer",
    "available_optimizers",
    "make_optimizer",
]


@dataclass(frozen=True)
class Request:
    """One evaluation to run.

    Attributes:
        levels: the assignment (int64 array, one level per unit).
        fidelity: how much data the oracle may use (tokens, samples); ``None``
            means the problem's default (usually its highest fidelity).
        sample: seed of the data sample to use; ``None`` means the problem's
            fixed default sample. Requests with equal (levels, fidelity, sample)
            are the same evaluation and are never run twice.
    """

    levels: np.ndarray
    fidelity: int | None = None
    sample: int | None = None

    def key(self) -> tuple[bytes, int | None, int | None]:
        return (np.ascontiguousarray(self.levels, dtype=np.int64).tobytes(), self.fidelity, self.sample)


class Optimizer(NoteTaker, abc.ABC):
    """Base class of ask/tell optimizers.

    Subclasses take ``space`` and keyword-only ``seed`` plus their own keyword
    options, implement :meth:`ask` and :meth:`tell`, and may override
    :meth:`recommend` (the default tracks the lowest value told). Failed
    evaluations are told as ``inf``. A fallback that changes what the search does
    (a component turned off, another start taken) is recorded with ``_note``: it is
    warned about once and listed by :meth:`notes` (and so in ``Result.notes``).
    """

    #: whether the optimizer can use a fidelity schedule (multi-fidelity methods)
    multi_fidelity: bool = False

    def __init__(self, space: LevelSpace, *, seed: int = 0) -> None:
        if not isinstance(space, LevelSpace):
            raise ValueError(f"space must be a LevelSpace, got {type(space).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        self.space = space
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)
        self._best_levels: np.ndarray | None = None
        self._best_value = float("inf")

    @abc.abstractmethod
    def ask(self) -> list[Request]:
        """The next batch of requests (non-empty unless :meth:`stop` is true)."""

    @abc.abstractmethod
    def tell(self, requests: Sequence[Request], values: Sequence[float]) -> None:
        """Values of the last asked batch, in order; ``inf`` marks a failed evaluation."""

    def stop(self) -> bool:
        """True when the optimizer has nothing more to ask (e.g. exhausted a finite space)."""
        return False

    def recommend(self) -> tuple[np.ndarray | None, float]:
        """``(levels, value)`` of the best assignment so far (``(None, inf)`` before any value)."""
        return self._best_levels, self._best_value

    def _track(self, requests: Sequence[Request], values: Sequence[float]) -> None:
        for r, v in zip(requests, values):
            if v < self._best_value:
                self._best_value, self._best_levels = float(v), r.levels.copy()


OptimizerFactory = Callable[..., Optimizer]
ENTRY_POINT_GROUP = "levelsearch.optimizers"
#: the optimizers: built-in ones register in ``levelsearch/__init__.py``, others through the entry-point group
OPTIMIZERS: Registry[OptimizerFactory] = Registry("optimizer", ENTRY_POINT_GROUP, extra="baselines")


def register_optimizer(name: str, factory: OptimizerFactory | str, *, replace: bool = False) -> None:
    """Register an optimizer class (or a ``"module:attr"`` string, imported on first use).

    Raises:
        ValueError: if ``name`` is already registered and ``replace`` is false.
    """
    OPTIMIZERS.register(name, factory, replace=replace)


def available_optimizers() -> list[str]:
    """Names of every registered optimizer (built in and from entry points), sorted."""
    return OPTIMIZERS.names()


def get_optimizer(name: str) -> OptimizerFactory:
    """The optimizer class registered under ``name``.

    Raises:
        ValueError: for an unknown name (listing the known ones), or when the
            optimizer's package needs an extra that is not installed.
    """
    return OPTIMIZERS.get(name)


def make_optimizer(name: str, space: LevelSpace, *, seed: int = 0, **options: Any) -> Optimizer:
    """Instantiate a registered optimizer by name with keyword options.

    Raises:
        ValueError: for an unknown name, an option the optimizer does not take, or a common option out of
            its bounds (:data:`levelsearch.config.OPTIMIZER_OPTIONS`, e.g. ``offspring`` in 1..100000).
    """
    from .config import OPTIMIZER_OPTIONS, validate  # bounds shared by every optimizer (offspring, batch...)

    factory = get_optimizer(name)
    validate(options, OPTIMIZER_OPTIONS, where=f"optimizer {name!r} options")
    try:
        return factory(space=space, seed=seed, **options)
    except TypeError as exc:
        raise ValueError(f"bad options for optimizer {name!r}: {exc}") from None
