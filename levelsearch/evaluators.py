"""Evaluators run batches of requests against a problem's oracle.

The in-process :class:`SerialEvaluator` is the default. Every evaluator has the
same interface — ``evaluate(requests) -> list[Outcome]`` in request order — so
a distributed one (Ray) is a drop-in replacement.
"""

from __future__ import annotations

import abc
import functools
import math
import numbers
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .notes import NoteTaker
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
    "EvaluationTimeout",
    "call_with_timeout",
    "private_levels",
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


class EvaluationTimeout(Exception):
    """An evaluation ran past its timeout (recorded as a failed evaluation, not retried)."""


def private_levels(levels: np.ndarray) -> np.ndarray:
    """A fresh, writable int64 copy of ``levels``: what the oracle gets, so nothing it does reaches the caller."""
    return np.array(levels, dtype=np.int64, copy=True, order="C")


def call_with_timeout(fn: Callable[[], Any], timeout: float | None) -> Any:
    """``fn()``, or :class:`EvaluationTimeout` once ``timeout`` seconds pass without an answer.

    The call runs in a daemon worker thread that is *abandoned* on timeout: Python cannot
    stop a thread, so it keeps running (and holding what it holds: CPU, GPU memory) until
    the oracle returns by itself, and whatever it returns then is ignored. This works from
    any thread and on every platform, unlike ``SIGALRM`` (main thread, POSIX only, and an
    exception thrown into arbitrary oracle code). Thread-local state of the caller, such as
    ``torch.no_grad()``, does not carry over into the worker thread.
    """
    if timeout is None:
        return fn()
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller below
            box["error"] = exc

    worker = threading.Thread(target=run, name="levelsearch-evaluation", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise EvaluationTimeout(f"the fitness did not return within {timeout:g} s (eval_timeout); it was abandoned")
    if "error" in box:
        raise box["error"]
    return box["value"]


def evaluate_one(
    problem: Problem, req: Request, retries: int = 0, worker: str = "local", *, timeout: float | None = None
) -> Outcome:
    """Call the oracle once (plus ``retries`` more times on an exception); never raises for oracle errors.

    Every attempt gets its own writable copy of the levels. NaN and infinite values
    are failures but are not retried: a deterministic oracle would return them again;
    nor is a call that ran past ``timeout`` seconds (see :func:`call_with_timeout`).

    Raises:
        FitnessTypeError: the oracle returned something that is not a real number.
    """
    t0 = time.perf_counter()
    error = "unknown"
    attempts = 0
    for _ in range(retries + 1):
        attempts += 1
        levels = private_levels(req.levels)
        try:
            raw = call_with_timeout(functools.partial(problem.evaluate, levels, req.fidelity, req.sample), timeout)
            value = fitness_value(raw)
        except (KeyboardInterrupt, FitnessTypeError):
            raise
        except EvaluationTimeout as exc:
            return Outcome(math.inf, str(exc), time.perf_counter() - t0, worker, attempts)
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


class Evaluator(NoteTaker, abc.ABC):
    """Interface of evaluators: run a batch, return one :class:`Outcome` per request, in order.

    ``on_result(index, outcome)`` is called as soon as each evaluation finishes
    (in any order), so the driver can journal it before the batch completes.
    A fallback it takes is recorded with ``_note`` (listed by :meth:`notes`).
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
    activations of an unchanged prefix of layers); if that raises (or returns the
    wrong number of values), the batch is evaluated one request at a time so that
    only the failing ones fail, and the first such fallback is noted (a warning, and
    ``Result.notes``).

    Args:
        problem: the problem whose oracle is called.
        retries: extra attempts for an evaluation that raised an exception.
        timeout: seconds an evaluation may take (``None``: no limit); a call past it is
            a failed evaluation and its thread is abandoned (see :func:`call_with_timeout`).
            A problem's ``evaluate_many`` is not used when a timeout is set.
    """

    def __init__(self, problem: Problem, *, retries: int = 0, timeout: float | None = None) -> None:
        self.problem = problem
        self.retries = int(retries)
        self.timeout = timeout

    def evaluate(self, requests: Sequence[Request], on_result: OnResult | None = None) -> list[Outcome]:
        many = getattr(self.problem, "evaluate_many", None)
        if many is not None and len(requests) > 1 and self.timeout is None:
            batch = self._try_many(many, requests)
            if batch is not None:
                for k, o in enumerate(batch):
                    if on_result is not None:
                        on_result(k, o)
                return batch
        out = []
        for k, r in enumerate(requests):
            o = evaluate_one(self.problem, r, self.retries, timeout=self.timeout)
            if on_result is not None:
                on_result(k, o)
            out.append(o)
        return out

    def _note_one_at_a_time(self, what: str) -> None:
        if not self.notes():  # the first failure says it; later batches fall back the same way
            self._note(
                f"{type(self.problem).__name__}.evaluate_many {what}; its batches are evaluated one request "
                "at a time whenever it fails (slower; the values are the same)"
            )

    def _try_many(self, many: Callable[..., Sequence[float]], requests: Sequence[Request]) -> list[Outcome] | None:
        t0 = time.perf_counter()
        try:
            raw = list(many([Request(private_levels(r.levels), r.fidelity, r.sample) for r in requests]))
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            reason = str(exc).splitlines()[0] if str(exc) else "no message"
            self._note_one_at_a_time(f"raised {type(exc).__name__} ({reason})")
            return None
        if len(raw) != len(requests):
            self._note_one_at_a_time(f"returned {len(raw)} values for {len(requests)} requests")
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
