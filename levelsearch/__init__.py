"""levelsearch: dynamic, non-uniform compression search (EvoPress and baselines).

The public API is re-exported here; the modules behind it may move.

>>> import numpy as np
>>> from levelsearch import LevelSpace, minimize
>>> space = LevelSpace(2, n_units=8, total=2)          # exactly 2 of 8 units at level 1
>>> errors = np.arange(8.0)
>>> result = minimize(lambda lv: float(errors @ lv), space, max_evaluations=300, seed=0)
>>> result.best_levels.tolist(), result.best_value
([1, 1, 0, 0, 0, 0, 0, 0], 1.0)
"""

from __future__ import annotations

from .additive import solve_additive
from .curve import CurvePoint, CurveResult, minimize_curve
from .driver import AllFailedError, Evaluation, Result, TracePoint, minimize
from .evaluators import Evaluator, Outcome, SerialEvaluator
from .evopress import PRESETS, EvoPress, ReferenceEvoPress, SelectionStep
from .journal import Journal, JournalMismatch
from .optimizer import (
    Optimizer,
    Request,
    available_optimizers,
    get_optimizer,
    make_optimizer,
    register_optimizer,
)
from .problem import (
    FunctionProblem,
    Problem,
    available_problems,
    get_problem_factory,
    make_problem,
    register_problem,
)
from .space import LevelSpace

__version__ = "0.1.0"

register_optimizer("evopress", EvoPress)
register_optimizer("evopress-ref", ReferenceEvoPress)

__all__ = [
    "AllFailedError",
    "CurvePoint",
    "CurveResult",
    "Evaluation",
    "Evaluator",
    "EvoPress",
    "FunctionProblem",
    "Journal",
    "JournalMismatch",
    "LevelSpace",
    "Optimizer",
    "Outcome",
    "PRESETS",
    "Problem",
    "ReferenceEvoPress",
    "Request",
    "Result",
    "SelectionStep",
    "SerialEvaluator",
    "TracePoint",
    "available_optimizers",
    "available_problems",
    "get_optimizer",
    "get_problem_factory",
    "make_optimizer",
    "make_problem",
    "minimize",
    "minimize_curve",
    "register_optimizer",
    "register_problem",
    "solve_additive",
    "__version__",
]
