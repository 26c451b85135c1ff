"""``minimize``: one driver for every optimizer, with the same budget accounting.

The driver asks the optimizer for a batch, answers what it can from the cache
(and, on resume, from the journal), sends the rest to the evaluator, journals
every result before telling the optimizer, and stops on the evaluation or
cost budget. Budget accounting: ``n_evaluations`` counts oracle evaluations
(never cache hits); ``cost`` adds each evaluation's fidelity (1 per
evaluation for problems without fidelity).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .evaluators import Evaluator, Outcome, SerialEvaluator
from .journal import Journal
from .optimizer import Optimizer, Request, make_optimizer
from .problem import FunctionProblem, Problem
from .space import LevelSpace

__all__ = ["minimize", "Result", "Evaluation", "TracePoint", "AllFailedError", "run_identity"]


class AllFailedError(RuntimeError):
    """Too many evaluations in a row failed: the oracle is broken, not the candidates."""


@dataclass(frozen=True)
class Evaluation:
    """One oracle evaluation, as journaled."""

    levels: np.ndarray
    value: float
    fidelity: int | None
    sample: int | None
    error: str | None
    seconds: float
    worker: str
    replayed: bool = False


@dataclass(frozen=True)
class TracePoint:
    """The optimizer's recommendation after a batch.

    ``value`` is what the optimizer believes (at the fidelity it measured);
    ``true_value`` is the problem's noise-free value when it offers one.
    """

    n_evaluations: int
    cost: float
    value: float
    true_value: float | None


@dataclass
class Result:
    """What :func:`minimize` returns.

    Attributes:
        best_levels: the recommended assignment (int64 array).
        best_value: its value as the optimizer measured it.
        n_evaluations: oracle evaluations spent (journal replays included).
        cost: fidelity spent (sum of the fidelity of every evaluation).
        history: every evaluation in order.
        trace: the recommendation after every told batch (for convergence plots).
        n_failures: failed evaluations (exceptions, NaN, inf).
        stopped_by: ``"max_evaluations"``, ``"max_cost"``, ``"target"``, ``"optimizer"``,
            ``"exhausted"`` (200 batches in a row proposed only evaluated points) or ``"interrupted"``.
        wall_seconds: wall time of this call.
        optimum: the problem's known optimum, when it has one (``None`` for an interrupted run).
    """

    best_levels: np.ndarray
    best_value: float
    n_evaluations: int
    cost: float
    history: list[Evaluation] = field(repr=False)
    trace: list[TracePoint] = field(repr=False)
    n_failures: int = 0
    stopped_by: str = ""
    wall_seconds: float = 0.0
    optimum: float | None = None
    best_true_value: float | None = None
    n_replayed: int = 0


# consecutive batches with nothing new to evaluate before the driver gives up
_MAX_IDLE_BATCHES = 200

ProgressHook = Callable[[int, float, float], None]


def minimize(
    fn: Callable[..., float] | Problem,
    space: LevelSpace | None = None,
    optimizer: str | Optimizer = "evopress",
    *,
    max_evaluations: int | None = None,
    max_cost: float | None = None,
    seed: int = 0,
    options: Mapping[str, Any] | None = None,
    evaluator: Evaluator | None = None,
    journal: str | Path | Journal | None = None,
    identity: Mapping[str, Any] | None = None,
    retries: int = 0,
    max_consecutive_failures: int = 100,
    progress: bool | ProgressHook = False,
    target: float | None = None,
) -> Result:
    """Minimise ``fn`` over ``space`` with a registered optimizer.

    Args:
        fn: ``fn(levels) -> float`` or ``fn(levels, fidelity, seed) -> float``
            (detected from the signature), or a :class:`Problem`. Lower is better.
        space: the level space (taken from the problem when ``fn`` is one).
        optimizer: a registered name (see ``levelsearch optimizers``) or an instance.
        max_evaluations: stop after this many oracle evaluations.
        max_cost: stop once this much fidelity is spent (tokens, samples).
        seed: seed of the optimizer (same seed ⇒ same trajectory).
        options: keyword options of the optimizer (e.g. ``{"offspring": 32}``).
        evaluator: how to run batches (default: in-process, serial).
        journal: a SQLite journal path (or open :class:`Journal`). An existing
            journal of the same run is replayed: the trajectory continues exactly
            where it stopped and journaled evaluations are not run again.
        identity: extra JSON-able facts that must match when a journal is resumed.
        retries: extra attempts for an evaluation that raised an exception.
        max_consecutive_failures: abort with :class:`AllFailedError` after this
            many failed evaluations in a row.
        progress: ``True`` for a tqdm bar, or a callable ``(n_evaluations, cost, best)``.
        target: stop as soon as the recommendation's value is ``<= target``.

    Returns:
        A :class:`Result`.

    Raises:
        ValueError: bad arguments (no stopping rule, unknown optimizer, a budget
            too small for one evaluation, a journal of another run, ...).
        AllFailedError: the oracle failed ``max_consecutive_failures`` times in a row.
    """
    t_start = time.perf_counter()
    problem = _as_problem(fn, space)
    space = problem.space
    if isinstance(optimizer, Optimizer):
        opt = optimizer
        if options:
            raise ValueError("options= only applies when optimizer is given by name")
        opt_name = type(optimizer).__name__
    else:
        opt = make_optimizer(optimizer, space, seed=seed, **dict(options or {}))
        opt_name = optimizer
    _check_budget(max_evaluations, max_cost, opt)
    if isinstance(retries, bool) or not isinstance(retries, (int, np.integer)) or retries < 0:
        raise ValueError(f"retries must be an integer >= 0, got {retries!r}")
    if (
        isinstance(max_consecutive_failures, bool)
        or not isinstance(max_consecutive_failures, (int, np.integer))
        or max_consecutive_failures < 1
    ):
        raise ValueError(f"max_consecutive_failures must be a positive integer, got {max_consecutive_failures!r}")
    if evaluator is not None and retries:
        raise ValueError("retries= configures the default evaluator; give retries to your evaluator instead")
    evaluator = evaluator or SerialEvaluator(problem, retries=int(retries))

    jr: Journal | None
    own_journal = False
    if journal is None or isinstance(journal, Journal):
        jr = journal
    else:
        jr = Journal(journal, identity=run_identity(problem, opt_name, options, seed, identity))
        own_journal = True

    # answers available without calling the oracle
    replay: dict[tuple[Any, ...], list[Outcome]] = {}
    if jr is not None:
        try:
            if not jr.readonly and jr.meta("cost_model") is None:  # lets reports price fidelity=None
                jr.set_meta(
                    "cost_model",
                    {"uses_fidelity": bool(problem.uses_fidelity), "max_fidelity": problem.max_fidelity},
                )
            for rec in jr.records():
                k = _norm_key(problem, rec.levels, rec.fidelity, rec.sample)
                replay.setdefault(k, []).append(Outcome(rec.value, rec.error, rec.seconds, rec.worker))
        except BaseException:
            if own_journal:
                jr.close()
            raise
    cache: dict[tuple[Any, ...], float] = {}

    led = _Ledger(problem, jr)
    trace: list[TracePoint] = []
    stopped_by = "optimizer"
    idle_batches = 0  # batches answered entirely from the cache
    bar = _make_bar(progress, max_evaluations, max_cost)
    try:
        while not opt.stop():
            batch = opt.ask()
            if not batch:
                stopped_by = "optimizer"
                break
            values: list[float] = [math.nan] * len(batch)
            keys = [_norm_key(problem, r.levels, r.fidelity, r.sample) for r in batch]
            todo: list[int] = []
            first_of: dict[tuple[Any, ...], int] = {}
            dup_of: dict[int, int] = {}
            for idx, k in enumerate(keys):
                if k in cache:
                    values[idx] = cache[k]
                elif k in first_of:
                    dup_of[idx] = first_of[k]
                else:
                    first_of[k] = idx
                    todo.append(idx)
            # budget: evaluate only what fits; an incomplete batch is never told
            allowed = len(todo)
            if max_evaluations is not None:
                allowed = min(allowed, max(0, max_evaluations - led.n_eval))
            if max_cost is not None:
                room, fit = max_cost - led.cost, 0
                for idx in todo[:allowed]:
                    c = problem.cost_of(batch[idx].fidelity)
                    if c > room + 1e-9:
                        break
                    room -= c
                    fit += 1
                allowed = fit
                if fit == 0 and todo and led.n_eval == 0:
                    raise ValueError(
                        f"max_cost={max_cost:g} does not cover a single evaluation "
                        f"(one costs {problem.cost_of(batch[todo[0]].fidelity):g}); raise max_cost"
                    )
            complete = allowed == len(todo)
            idle_batches = 0 if todo else idle_batches + 1
            if idle_batches > _MAX_IDLE_BATCHES:
                # every proposal was already evaluated: a small space is exhausted
                stopped_by = "exhausted"
                break
            run_now = todo[:allowed]
            fresh: list[int] = []
            for idx in run_now:
                if replay.get(keys[idx]):
                    out = replay[keys[idx]].pop(0)
                    values[idx] = out.value
                    led.record(batch[idx], out, replayed=True)
                else:
                    fresh.append(idx)
            if fresh:
                sink = _Sink(led, batch, fresh, values)
                outs = evaluator.evaluate([batch[i] for i in fresh], on_result=sink)
                sink.finish(outs)
            # Replayed failures count towards the streak (a resumed run behaves like an
            # uninterrupted one), but a batch answered only from the journal never aborts:
            # resuming a run that stopped on failures (after fixing the oracle) tries again.
            if fresh and led.consecutive_fail >= max_consecutive_failures:
                raise AllFailedError(
                    f"{led.consecutive_fail} evaluations in a row failed (last: {led.history[-1].error}); "
                    "the fitness function looks broken"
                )
            for idx in run_now:
                cache[keys[idx]] = values[idx]
            if not complete:
                hit_evals = max_evaluations is not None and led.n_eval >= max_evaluations
                stopped_by = "max_evaluations" if hit_evals else "max_cost"
                break
            for idx, src in dup_of.items():
                values[idx] = values[src]
            opt.tell(batch, values)
            rec_levels, rec_value = opt.recommend()
            tv = problem.true_value(rec_levels) if rec_levels is not None else None
            shown = min(led.best_value, rec_value) if not problem.uses_fidelity else rec_value
            trace.append(TracePoint(led.n_eval, led.cost, shown, tv))
            if bar is not None:
                bar(led.n_eval, led.cost, shown)
            if target is not None and shown <= target:
                stopped_by = "target"
                break
            if max_evaluations is not None and led.n_eval >= max_evaluations:
                stopped_by = "max_evaluations"
                break
            if max_cost is not None and led.cost >= max_cost:
                stopped_by = "max_cost"
                break
    except KeyboardInterrupt:
        stopped_by = "interrupted"
    finally:
        if bar is not None:
            bar.close()
        if own_journal and jr is not None:
            jr.close()

    levels, value = opt.recommend()
    if not problem.uses_fidelity and led.best_levels is not None and led.best_value <= value:
        # every value of a fidelity-free problem is exact: the best seen is the best
        value, levels = led.best_value, led.best_levels
    if levels is not None and not math.isfinite(value) and led.best_levels is not None:
        # the recommendation's last evaluation failed: report the best successful one instead
        value, levels = led.best_value, led.best_levels
    if levels is None:
        levels = led.best_levels if led.best_levels is not None else space.uniform()
        if levels is None:
            levels = np.zeros(space.n_units, dtype=np.int64)
        value = led.best_value
    return Result(
        best_levels=np.asarray(levels, dtype=np.int64),
        best_value=float(value),
        n_evaluations=led.n_eval,
        cost=led.cost,
        history=led.history,
        trace=trace,
        n_failures=led.n_fail,
        stopped_by=stopped_by,
        wall_seconds=time.perf_counter() - t_start,
        # a known optimum may take long to compute (enumeration): not while the user waits on Ctrl-C
        optimum=None if stopped_by == "interrupted" else problem.optimum,
        best_true_value=problem.true_value(levels),
        n_replayed=sum(e.replayed for e in led.history),
    )


class _Ledger:
    """Counts what was spent and keeps the history; journals fresh results first."""

    def __init__(self, problem: Problem, journal: Journal | None) -> None:
        self.problem = problem
        self.journal = journal
        self.history: list[Evaluation] = []
        self.n_eval = 0
        self.cost = 0.0
        self.n_fail = 0
        self.consecutive_fail = 0
        self.best_value = math.inf
        self.best_levels: np.ndarray | None = None

    def record(self, req: Request, out: Outcome, *, replayed: bool) -> None:
        if not replayed and self.journal is not None:
            self.journal.append(req.levels, req.fidelity, req.sample, out.value, out.error, out.seconds, out.worker)
        self.n_eval += 1
        self.cost += self.problem.cost_of(req.fidelity)
        self.history.append(
            Evaluation(
                req.levels.copy(), out.value, req.fidelity, req.sample, out.error, out.seconds, out.worker, replayed
            )
        )
        if out.error is not None:
            self.n_fail += 1
            self.consecutive_fail += 1
        else:
            self.consecutive_fail = 0
            if out.value < self.best_value:
                self.best_value, self.best_levels = out.value, req.levels.copy()


class _Sink:
    """Receives outcomes as they finish (any order) and records each exactly once."""

    def __init__(self, led: _Ledger, batch: Sequence[Request], fresh: list[int], values: list[float]) -> None:
        self.led, self.batch, self.fresh, self.values = led, batch, fresh, values
        self.done: set[int] = set()

    def __call__(self, k: int, out: Outcome) -> None:
        if k in self.done:
            return
        self.done.add(k)
        idx = self.fresh[k]
        self.values[idx] = out.value
        self.led.record(self.batch[idx], out, replayed=False)

    def finish(self, outs: Sequence[Outcome]) -> None:
        for k, out in enumerate(outs):
            self(k, out)


def run_identity(
    problem: Problem,
    optimizer: str,
    options: Mapping[str, Any] | None,
    seed: int,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What a journal must have been written by to be replayed: problem, optimizer, options, seed (+ ``extra``)."""
    return {
        "problem": problem.describe(),
        "optimizer": optimizer,
        "options": dict(options or {}),
        "seed": int(seed),
        **dict(extra or {}),
    }


def _norm_key(problem: Problem, levels: np.ndarray, fidelity: int | None, sample: int | None) -> tuple[Any, ...]:
    lb = np.ascontiguousarray(levels, dtype=np.int64).tobytes()
    if not problem.uses_fidelity:
        return (lb,)
    return (lb, fidelity, sample)


def _as_problem(fn: Any, space: LevelSpace | None) -> Problem:
    if isinstance(fn, Problem):
        if space is not None and space is not fn.space:
            raise ValueError("pass either a Problem or a function with a space, not both")
        return fn
    if space is None:
        raise ValueError("minimize(fn, space): a plain function needs a LevelSpace")
    if not isinstance(space, LevelSpace):
        raise ValueError(f"space must be a LevelSpace, got {type(space).__name__}")
    return FunctionProblem(fn, space)


def _check_budget(max_evaluations: int | None, max_cost: float | None, opt: Optimizer) -> None:
    if max_evaluations is not None and (
        not isinstance(max_evaluations, (int, np.integer)) or isinstance(max_evaluations, bool) or max_evaluations < 1
    ):
        raise ValueError(f"max_evaluations must be a positive integer, got {max_evaluations!r}")
    if max_cost is not None and (not isinstance(max_cost, (int, float)) or max_cost <= 0):
        raise ValueError(f"max_cost must be a positive number, got {max_cost!r}")
    if max_evaluations is None and max_cost is None and getattr(opt, "max_generations", None) is None:
        raise ValueError("give a stopping rule: max_evaluations, max_cost or the optimizer's max_generations")


class _Bar:
    def __init__(self, hook: Any, total: int | None, by_cost: bool) -> None:
        self.hook = hook
        self.by_cost = by_cost
        self.last: float = 0
        self.tqdm = None
        if hook is True:
            from tqdm.auto import tqdm

            unit = "cost" if by_cost else "eval"
            self.tqdm = tqdm(total=total, unit=unit, dynamic_ncols=True, leave=True)

    def __call__(self, n: int, cost: float, best: float) -> None:
        if self.tqdm is not None:
            pos: float = cost if self.by_cost else int(n)
            self.tqdm.update(pos - self.last)
            self.last = pos
            self.tqdm.set_postfix_str(f"best={best:.6g}", refresh=False)
        elif callable(self.hook):
            self.hook(n, cost, best)

    def close(self) -> None:
        if self.tqdm is not None:
            self.tqdm.close()


def _make_bar(progress: Any, max_evaluations: int | None, max_cost: float | None) -> _Bar | None:
    if progress is False or progress is None:
        return None
    by_cost = max_evaluations is None and max_cost is not None
    total = int(max_cost) if by_cost and max_cost is not None else max_evaluations
    return _Bar(progress, total, by_cost)


def batch_levels(requests: Sequence[Request]) -> np.ndarray:
    """Stack the levels of a batch into a 2-D array (helper for vectorised oracles)."""
    return np.stack([r.levels for r in requests])
