"""Nevergrad optimizers as levelsearch optimizers (``nevergrad-ngopt``, ``nevergrad-cma``, ...).

Pinned to Nevergrad 1.x. The parametrization is one ``ng.p.Array`` with a
seeded ``random_state``:

- ``"repair"`` encoding (default): bounds ``[-0.49, K_i - 0.51]`` per unit with
  integer casting (each level gets a rounding interval of equal width), then
  ``space.repair``. When repair changed the point, the *repaired* levels are
  told as a new child (``parametrization.spawn_child(new_value=levels)``; every
  optimizer used here accepts points it did not ask for) and the asked
  candidate is dropped.
- ``"rank"`` encoding (binary spaces): unbounded scores, top-k per group; the
  asked candidate is told (it always decodes to a feasible point).

Failed evaluations are told as a finite penalty worse than every value seen.
``budget`` (evaluations) is passed to the optimizer when given; NGOpt uses it to
pick its sub-algorithm (it assumes 10,000 when none is given), the others
ignore it. ``batch`` is also Nevergrad's
``num_workers``.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from levelsearch import LevelSpace

from ._common import EncodedBaseline

__all__ = [
    "NevergradNGOpt",
    "NevergradDiscreteLenglerOnePlusOne",
    "NevergradPortfolioDiscreteOnePlusOne",
    "NevergradDiscreteOnePlusOne",
    "NevergradCMA",
]


class _NevergradBaseline(EncodedBaseline):
    #: name in ``nevergrad.optimizers.registry``
    ng_name: str = ""
    #: budget assumed when none is given (NGOpt cannot choose without one)
    default_budget: int | None = None

    def __init__(
        self,
        space: LevelSpace,
        *,
        seed: int = 0,
        encoding: str = "repair",
        batch: int = 1,
        budget: int | None = None,
    ) -> None:
        super().__init__(space, seed=seed, encoding=encoding, batch=batch)
        import nevergrad as ng

        n = space.n_units
        if self.encoding == "rank":
            param = ng.p.Array(shape=(n,))
        else:
            param = ng.p.Array(shape=(n,), lower=-0.49, upper=space.max_level.astype(float) + 0.49)
            param.set_integer_casting()
        param.random_state = np.random.RandomState(self.seed)
        budget = self.default_budget if budget is None else budget
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._opt = ng.optimizers.registry[self.ng_name](
                parametrization=param, budget=None if budget is None else int(budget), num_workers=self.batch
            )

    def _ask_raw(self) -> tuple[Any, np.ndarray]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cand = self._opt.ask()
        return cand, np.asarray(cand.value, dtype=float)

    def _tell_raw(self, handle: Any, raw: np.ndarray, levels: np.ndarray, changed: bool, value: float | None) -> None:
        v = self.penalty() if value is None else value
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if changed:
                child = self._opt.parametrization.spawn_child(new_value=levels.astype(float))
                self._opt.tell(child, v)
            else:
                self._opt.tell(handle, v)


class NevergradNGOpt(_NevergradBaseline):
    """Nevergrad's NGOpt meta-optimizer (``nevergrad-ngopt``); picks an algorithm from the budget and space."""

    ng_name = "NGOpt"
    default_budget = 10_000


class NevergradDiscreteLenglerOnePlusOne(_NevergradBaseline):
    """(1+1) EA with Lengler's mutation-rate schedule (``nevergrad-discretelenglerplusone``)."""

    ng_name = "DiscreteLenglerOnePlusOne"


class NevergradPortfolioDiscreteOnePlusOne(_NevergradBaseline):
    """(1+1) EA with a portfolio of mutation rates (``nevergrad-portfoliodiscreteoneplusone``)."""

    ng_name = "PortfolioDiscreteOnePlusOne"


class NevergradDiscreteOnePlusOne(_NevergradBaseline):
    """(1+1) EA with the standard 1/n discrete mutation (``nevergrad-discreteoneplusone``)."""

    ng_name = "DiscreteOnePlusOne"


class NevergradCMA(_NevergradBaseline):
    """Nevergrad's CMA-ES on the integer-cast (or rank-score) vector (``nevergrad-cma``)."""

    ng_name = "CMA"
