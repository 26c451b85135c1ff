"""Evaluators run batches of requests against a problem's oracle.

The in-process :class:`SerialEvaluator` is the default. Every evaluator has the
same interface — ``evaluate(requests) -> list[Outcome]`` in request order — so
a distributed one (Ray) is a drop-in replacement.
"""

from __future__ import annotations

import abc
import math
import numbers
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .optimizer import Request
from .problem import Problem

__all__ = [
    "Outcome",
    "Evaluator",
    "SerialEvaluator",
    "evaluate_one",
    "WorkersLostError",
    "FitnessTypeError",
    "fitness_value",
]


class FitnessTypeError(TypeError, ValueError):
    """The fitness returned something that is not a real number (a str, bool, Decimal, list...).

    This is a bug in the oracle, not a bad candidate: it stops the run at once
    instead of being recorded as one failed evaluation (or silently coerced).
    """


def fitness_value(raw: Any) -> float:
    """``raw`` as a float when it is a real number (int, float, numpy scalar, 0-d array or tensor).

    Raises:
        FitnessTypeError: for anything else: a ``str`` (even ``"0.5"``), a ``bool``, a
            ``Decimal``, ``None``, a sequence, an array of more than one value.
    """
    if isinstance(raw, (bool, np.bool_)):
        raise FitnessTypeError(f"the fitness returned a bool ({raw!r}); return a float, lower is better")
    if isinstance(raw, numbers.Real):
        return float(raw)
    if isinstance(raw, np.ndarray) and raw.ndim == 0 and raw.dtype.kind in "iuf":
        return float(raw)
    if (
        type(raw).__module__.split(".")[0] == "torch"
        and getattr(raw, "ndim", None) == 0
        and str(getattr(raw, "dtype", "")).startswith(("torch.float", "torch.int", "torch.bfloat"))
    ):
        return float(raw)
    shown = repr(raw)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    raise FitnessTypeError(
        f"the fitness returned {type(raw).__name__} {shown}, not a real number; return a float, lower is better"
    )


class WorkersLostError(RuntimeError):
    """A distributed evaluator lost more workers than it may replace; the journal keeps what finished."""


@dataclass(frozen=True)
class Outcome:
    """Result of one evaluation.

    Attributes:
        value: the fitness, ``inf`` when the evaluation failed.
        error: ``None`` on success, else a one-line reason (exception, NaN, inf).
        seconds: wall time of the oracle call(s), retries included.
        worker: which worker ran it (``"local"`` in-process).
        attempts: how many times the oracle was called.
    """

    value: float
    error: str | None = None
    seconds: float = 0.0
    worker: str = "local"
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.error is None


def evaluate_one(problem: Problem, req: Request, retries: int = 0, worker: str = "local") -> Outcome:
    """Call the oracle once (plus ``retries`` more times on an exception); never raises for oracle errors.

    NaN and infinite values are failures but are not retried: a deterministic
    oracle would return them again.

    Raises:
        FitnessTypeError: the oracle returned something that is not a real number.
    """
    t0 = time.perf_counter()
    error = "unknown"
    attempts = 0
    for _ in range(retries + 1):
        attempts += 1
        try:
            value = fitness_value(problem.evaluate(req.levels, req.fidelity, req.sample))
        except (KeyboardInterrupt, FitnessTypeError):
            raise
        except Exception as exc:  # the oracle is user code: any exception is a failed evaluation
            tb = traceback.extract_tb(exc.__traceback__)
            where = f" at {tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno}" if tb else ""
            error = f"{type(exc).__name__}: {exc}{where}"
            continue
        if math.isnan(value):
            return Outcome(math.inf, "fitness returned NaN", time.perf_counter() - t0, worker, attempts)
        if math.isinf(value):
            return Outcome(math.inf, f"fitness returned {value}", time.perf_counter() - t0, worker, attempts)
        return Outcome(value, None, time.perf_counter() - t0, worker, attempts)
    return Outcome(math.inf, error, time.perf_counter() - t0, worker, attempts)


OnResult = Callable[[int, Outcome], None]


class Evaluator(abc.ABC):
    """Interface of evaluators: run a batch, return one :class:`Outcome` per request, in order.

    ``on_result(index, outcome)`` is called as soon as each evaluation finishes
    (in any order), so the driver can journal it before the batch completes.
    """

    @abc.abstractmethod
    def evaluate(self, requests: Sequence[Request], on_result: OnResult | None = None) -> list[Outcome]:
        """Evaluate ``requests``; one :class:`Outcome` per request, in the order given."""

    def close(self) -> None:  # noqa: B027 - an optional hook, not abstract
        """Release workers (no-op for in-process evaluation)."""


class SerialEvaluator(Evaluator):
    """Evaluate requests one after the other in this process (the default).

    A problem that defines ``evaluate_many(requests) -> list[float]`` gets the
    whole batch at once (e.g. to share work between candidates, such as the
    activations of an unchanged prefix of layers); if that raises, the batch is
    evaluated one request at a time so that only the failing ones fail.
    """

    def __init__(self, problem: Problem, *, retries: int = 0) -> None:
        self.problem = problem
        self.retries = int(retries)

    def evaluate(self, requests: Sequence[Request], on_result: OnResult | None = None) -> list[Outcome]:
        many = getattr(self.problem, "evaluate_many", None)
        if many is not None and len(requests) > 1:
            batch = self._try_many(many, requests)
            if batch is not None:
                for k, o in enumerate(batch):
                    if on_result is not None:
                        on_result(k, o)
                return batch
        out = []
        for k, r in enumerate(requests):
            o = evaluate_one(self.problem, r, self.retries)
            if on_result is not None:
                on_result(k, o)
            out.append(o)
        return out

    def _try_many(self, many: Callable[..., Sequence[float]], requests: Sequence[Request]) -> list[Outcome] | None:
        t0 = time.perf_counter()
        try:
            raw = list(many(list(requests)))
        except KeyboardInterrupt:
            raise
        except Exception:
            return None
        if len(raw) != len(requests):
            return None
        values = [fitness_value(v) for v in raw]  # a str or bool is a bug of the oracle: raised
        each = (time.perf_counter() - t0) / max(1, len(requests))
        outs = []
        for v in values:
            if math.isnan(v) or math.isinf(v):
                outs.append(Outcome(math.inf, f"fitness returned {v}", each))
            else:
                outs.append(Outcome(v, None, each))
        return outs
