"""``minimize``: one driver for every optimizer, with the same budget accounting.

The driver asks the optimizer for a batch, answers what it can from the cache
(and, on resume, from the journal), sends the rest to the evaluator, journals
every result before telling the optimizer, and stops on the evaluation or
cost budget. Budget accounting: ``n_evaluations`` counts oracle evaluations
(never cache hits); ``cost`` adds each evaluation's fidelity (1 per
evaluation for problems without fidelity).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import signal
import threading
import time
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import MAX_COST, MAX_EVALUATIONS, check_finite  # the largest budgets accepted: more is a typo
from .evaluators import Evaluator, Outcome, SerialEvaluator, fitness_value, private_levels
from .journal import Journal, JournalMismatch, JournalRecord
from .optimizer import Optimizer, Request, get_optimizer, make_optimizer
from .problem import FunctionProblem, Problem
from .space import LevelSpace

__all__ = [
    "minimize",
    "Result",
    "Evaluation",
    "TracePoint",
    "AllFailedError",
    "run_identity",
    "oracle_fingerprint",
    "spot_check_tolerance",
    "problem_options",
    "MAX_EVALUATIONS",
    "MAX_COST",
]


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
        n_evaluations: oracle evaluations spent (journal replays included; the spot-checks
            of a resume are not: a resumed run reports what an uninterrupted one would).
        cost: fidelity spent (sum of the fidelity of every evaluation).
        history: every evaluation in order.
        trace: the recommendation after every told batch (for convergence plots).
        n_failures: failed evaluations (exceptions, NaN, inf).
        stopped_by: ``"max_evaluations"``, ``"max_cost"``, ``"target"``, ``"optimizer"``,
            ``"exhausted"`` (200 batches in a row proposed only evaluated points) or ``"interrupted"``.
        wall_seconds: wall time of this call.
        optimum: the problem's known optimum, when it has one (``None`` for an interrupted run).
        n_replayed: evaluations answered from the journal.
        n_spot_checks: journaled evaluations measured again before the journal was replayed
            (oracle calls that are not in ``n_evaluations``, ``cost`` or ``history``).
        notes: fallbacks the optimizer or the evaluator took that changed what the run did, one
            sentence each (e.g. EvoPress's model jumps turned off because the knapsack cannot be
            solved); each was also issued once as a ``RuntimeWarning``. Empty when none was taken.
        defaults: what the search used and where it came from, for an optimizer given by name
            (see :func:`problem_options`): ``{"schedule": ..., "schedule_from": "problem" |
            "options" | "optimizer", "start_from": ...}``; empty for an optimizer instance.
        stop_reason: when the optimizer stopped the run (``stopped_by == "optimizer"``), why, in
            words (e.g. EvoPress's stopping rule); else empty.
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
    n_spot_checks: int = 0
    notes: list[str] = field(default_factory=list)
    defaults: dict[str, Any] = field(default_factory=dict)
    stop_reason: str = ""


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
    resume: bool = False,
    eval_timeout: float | None = None,
    spot_checks: int = 3,
) -> Result:
    """Minimise ``fn`` over ``space`` with a registered optimizer.

    Args:
        fn: ``fn(levels) -> float`` or ``fn(levels, fidelity, seed) -> float``
            (detected from the signature), or a :class:`Problem`. Lower is better.
        space: the level space (taken from the problem when ``fn`` is one).
        optimizer: a registered name (see ``levelsearch optimizers``) or an instance.
        max_evaluations: stop after this many oracle evaluations.
        max_cost: stop once this much fidelity is spent (tokens, samples).
        seed: seed of the optimizer, an integer >= 0 (same seed ⇒ same trajectory).
        options: keyword options of the optimizer (e.g. ``{"offspring": 32}``).
        evaluator: how to run batches (default: in-process, serial).
        journal: a SQLite journal path (or open :class:`Journal`). An existing
            journal of the same run is replayed: the trajectory continues exactly
            where it stopped and journaled evaluations are not run again. It must
            have been written by the same problem description and the same oracle
            (see :func:`oracle_fingerprint`), else :class:`JournalMismatch`. Before a
            journal with evaluations is replayed, ``spot_checks`` of them are measured
            again (the first, the best and the last successful ones): they must give the
            journaled values (see :func:`spot_check_tolerance`), else :class:`JournalMismatch`.
            Every fitness gets its own writable copy of its levels.
        identity: extra JSON-able facts that must match when a journal is resumed.
        retries: extra attempts for an evaluation that raised an exception.
        max_consecutive_failures: abort with :class:`AllFailedError` after this
            many failed evaluations in a row.
        progress: ``True`` for a tqdm bar, or a callable ``(n_evaluations, cost, best)``.
        target: stop as soon as the recommendation's value is ``<= target``.
        resume: replay a journal even though it was written by another oracle (a fitness
            function whose code or data changed, e.g. only its docstring or logging):
            you vouch that it gives the values journaled. The problem description,
            optimizer, options and seed must still match, and the spot-checks still run.
        eval_timeout: seconds one evaluation may take (default: no limit). A call past it
            is a failed evaluation ("did not return within ..."); it runs in a worker thread
            that is abandoned and keeps running until the oracle returns by itself (see
            :func:`~levelsearch.evaluators.call_with_timeout`). For the default evaluator only.
        spot_checks: journaled evaluations measured again before a replay (default 3;
            0 skips the check: you vouch that the oracle gives the journaled values).

    Returns:
        A :class:`Result`.

    Raises:
        ValueError: bad arguments (no stopping rule, unknown optimizer, a budget
            too small, non-finite or absurdly large, a non-finite option, a journal of
            another run or oracle, ...).
        FitnessTypeError: the oracle returned something that is not a real number.
        AllFailedError: the oracle failed ``max_consecutive_failures`` times in a row.
    """
    t_start = time.perf_counter()
    problem, opt, opt_name = _prepare(fn, space, optimizer, options, seed, target, max_evaluations, max_cost)
    _check_run_arguments(evaluator, retries, max_consecutive_failures, eval_timeout, spot_checks)
    spot_check_tolerance(problem)  # a bad replay_tolerance is an error before anything runs
    evaluator = evaluator or SerialEvaluator(problem, retries=int(retries), timeout=eval_timeout)
    jr, own_journal = _open_journal(journal, problem, opt_name, options, seed, identity, resume)
    replay, journaled = _replay_table(jr, problem, own_journal)
    led = _Ledger(problem, jr)
    bar = _make_bar(progress, max_evaluations, max_cost)
    loop = _Loop(
        problem,
        opt,
        evaluator,
        led,
        replay,
        max_evaluations=max_evaluations,
        max_cost=max_cost,
        target=target,
        max_consecutive_failures=max_consecutive_failures,
        bar=bar,
    )
    n_spot = 0
    try:
        if journaled and spot_checks:
            assert jr is not None
            n_spot = _spot_check(jr, problem, evaluator, journaled, seed, int(spot_checks))
        stopped_by = loop.run()
    except KeyboardInterrupt:
        stopped_by = "interrupted"
    finally:
        # a burst of Ctrl-C must not break the clean-up: further SIGINTs wait until it is done
        with _sigint_deferred():
            if bar is not None:
                bar.close()
            if own_journal and jr is not None:
                jr.close()
    # a known optimum may take long to compute (enumeration): not while the user waits on Ctrl-C
    optimum = None if stopped_by == "interrupted" else problem.optimum
    with _sigint_deferred():
        res = _result(problem, opt, led, loop.trace, stopped_by, t_start, n_spot, optimum, _notes(opt, evaluator))
    res.defaults = dict(getattr(opt, "defaults", None) or {})
    if res.defaults.get("start_from") == "optimizer" and getattr(opt, "start_source", ""):
        res.defaults["start_from"] = f"optimizer ({opt.start_source})"  # type: ignore[attr-defined]
    if stopped_by == "optimizer":
        res.stop_reason = str(getattr(opt, "stop_reason", "") or "")
    return res


def _prepare(
    fn: Any,
    space: LevelSpace | None,
    optimizer: str | Optimizer,
    options: Mapping[str, Any] | None,
    seed: int,
    target: float | None,
    max_evaluations: int | None,
    max_cost: float | None,
) -> tuple[Problem, Optimizer, str]:
    """Check what defines the search and build it: ``(problem, optimizer, the optimizer's name)``."""
    _check_seed(seed)
    problem = _as_problem(fn, space)
    check_finite(options, "options")
    if target is not None and (
        isinstance(target, bool) or not isinstance(target, (int, float, np.number)) or math.isnan(target)
    ):
        raise ValueError(f"target must be a number, got {target!r}")
    if isinstance(optimizer, Optimizer):
        opt = optimizer
        if options:
            raise ValueError("options= only applies when optimizer is given by name")
        opt_name = type(optimizer).__name__
    else:
        merged, defaults = problem_options(problem, optimizer, options)
        opt = make_optimizer(optimizer, problem.space, seed=seed, **merged)
        if defaults and hasattr(opt, "steps"):  # the schedule as run, whoever chose it
            defaults["schedule"] = {
                "offspring": int(opt.offspring),  # type: ignore[attr-defined]
                "steps": [[st.fidelity, st.survivors] for st in opt.steps],  # type: ignore[attr-defined]
                **({"screen": int(opt.screen)} if hasattr(opt, "screen") else {}),
            }
        opt.defaults = defaults  # type: ignore[attr-defined]
        opt_name = optimizer
    _check_budget(max_evaluations, max_cost, opt)
    _offer_unit_errors(problem, opt)
    return problem, opt, opt_name


#: options that define an EvoPress schedule: a user who gives ``steps`` or ``preset`` chose their own
_SCHEDULE_KEYS = ("steps", "preset")


def problem_options(
    problem: Problem, optimizer: str, options: Mapping[str, Any] | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The options ``optimizer`` runs with on ``problem``: the user's, over the problem's defaults.

    For ``evopress`` and ``evopress-ref`` (and their subclasses) whose options name no ``steps`` or
    ``preset``, the problem's :meth:`~levelsearch.Problem.default_schedule` fills every key the user
    left out; for ``evopress``, the problem's :meth:`~levelsearch.Problem.default_start` is the start
    when none is given. Other optimizers get the options unchanged.

    Returns:
        ``(options, defaults)``: the merged options and a JSON-able record of what was used and
        where it came from (``schedule``, ``schedule_from``, ``start_from``), as ``summary.json`` keeps it.
    """
    from .evopress import EvoPress, ReferenceEvoPress

    given = dict(options or {})
    factory = get_optimizer(optimizer)
    if not (isinstance(factory, type) and issubclass(factory, ReferenceEvoPress)):
        return given, {}
    merged = dict(given)
    schedule_from = "options" if any(k in given for k in _SCHEDULE_KEYS) else "optimizer"
    if schedule_from == "optimizer":
        suggested = problem.default_schedule("evopress" if issubclass(factory, EvoPress) else optimizer)
        if suggested:
            merged = {**suggested, **given}
            schedule_from = (
                "problem"
                if not set(given) & set(suggested)
                else "problem, with the user's " + ", ".join(sorted(set(given) & set(suggested)))
            )
    start_from = "options" if "start" in given else "optimizer"
    if start_from == "optimizer" and issubclass(factory, EvoPress):
        start = problem.default_start()
        if start is not None:
            merged["start"] = start
            start_from = "problem"
    schedule = {k: merged[k] for k in ("offspring", "steps", "screen", "max_switches") if k in merged}
    return merged, {"schedule": _jsonable(schedule), "schedule_from": schedule_from, "start_from": start_from}


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _check_run_arguments(
    evaluator: Evaluator | None,
    retries: int,
    max_consecutive_failures: int,
    eval_timeout: float | None,
    spot_checks: int,
) -> None:
    """Check how the run is carried out (retries, failure streak, timeout, spot-checks)."""
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
    if eval_timeout is not None and (
        isinstance(eval_timeout, bool)
        or not isinstance(eval_timeout, (int, float, np.integer, np.floating))
        or not 0 < eval_timeout < math.inf
    ):
        raise ValueError(f"eval_timeout must be a positive number of seconds, got {eval_timeout!r}")
    if evaluator is not None and eval_timeout is not None:
        raise ValueError("eval_timeout= configures the default evaluator; give a timeout to your evaluator instead")
    if isinstance(spot_checks, bool) or not isinstance(spot_checks, (int, np.integer)) or spot_checks < 0:
        raise ValueError(f"spot_checks must be an integer >= 0, got {spot_checks!r}")


def _open_journal(
    journal: str | Path | Journal | None,
    problem: Problem,
    opt_name: str,
    options: Mapping[str, Any] | None,
    seed: int,
    identity: Mapping[str, Any] | None,
    resume: bool,
) -> tuple[Journal | None, bool]:
    """The run's journal, bound to its oracle, and whether :func:`minimize` opened it (and closes it)."""
    if journal is None or isinstance(journal, Journal):
        jr, own_journal = journal, False
    else:
        jr, own_journal = Journal(journal, identity=run_identity(problem, opt_name, options, seed, identity)), True
    if jr is not None:
        try:
            _check_oracle(jr, problem, resume)
        except BaseException:
            if own_journal:
                jr.close()
            raise
    return jr, own_journal


def _replay_table(
    jr: Journal | None, problem: Problem, own_journal: bool
) -> tuple[dict[tuple[Any, ...], list[Outcome]], list[JournalRecord]]:
    """Answers available without calling the oracle: journaled outcomes by request key, and the records."""
    replay: dict[tuple[Any, ...], list[Outcome]] = {}
    journaled: list[JournalRecord] = []
    if jr is None:
        return replay, journaled
    try:
        if not jr.readonly and jr.meta("cost_model") is None:  # lets reports price fidelity=None
            jr.set_meta(
                "cost_model",
                {"uses_fidelity": bool(problem.uses_fidelity), "max_fidelity": problem.max_fidelity},
            )
        journaled = list(jr.records())
        for rec in journaled:
            k = _norm_key(problem, rec.levels, rec.fidelity, rec.sample)
            replay.setdefault(k, []).append(Outcome(rec.value, rec.error, rec.seconds, rec.worker))
    except BaseException:
        if own_journal:
            jr.close()
        raise
    return replay, journaled


def _notes(opt: Optimizer, evaluator: Evaluator) -> list[str]:
    """What the optimizer and the evaluator recorded about fallbacks they took, each sentence once."""
    out: list[str] = []
    for source in (opt, evaluator):
        notes = getattr(source, "notes", None)
        for note in notes() if callable(notes) else ():
            if note not in out:
                out.append(str(note))
    return out


class _Loop:
    """The ask → answer (cache, journal, oracle) → tell loop of :func:`minimize`, one batch at a time."""

    def __init__(
        self,
        problem: Problem,
        opt: Optimizer,
        evaluator: Evaluator,
        led: _Ledger,
        replay: dict[tuple[Any, ...], list[Outcome]],
        *,
        max_evaluations: int | None,
        max_cost: float | None,
        target: float | None,
        max_consecutive_failures: int,
        bar: _Bar | None,
    ) -> None:
        self.problem, self.opt, self.evaluator, self.led, self.replay = problem, opt, evaluator, led, replay
        self.max_evaluations, self.max_cost, self.target = max_evaluations, max_cost, target
        self.max_consecutive_failures = max_consecutive_failures
        self.bar = bar
        self.cache: dict[tuple[Any, ...], float] = {}
        self.trace: list[TracePoint] = []
        self.idle_batches = 0  # batches answered entirely from the cache

    def run(self) -> str:
        """Run batches until a stopping rule holds; returns what stopped the run (``Result.stopped_by``)."""
        while not self.opt.stop():
            batch = self.opt.ask()
            if not batch:
                break
            stopped_by = self._batch(batch)
            if stopped_by is not None:
                return stopped_by
        return "optimizer"

    def _batch(self, batch: list[Request]) -> str | None:
        """Answer one batch and tell it; returns a stopping reason, or ``None`` to go on."""
        led = self.led
        # the driver's own copies for the journal and history; the evaluator gets copies of
        # these (and each oracle call its own), so nothing a fitness does reaches them
        asked = [Request(_frozen(r.levels), r.fidelity, r.sample) for r in batch]
        values: list[float] = [math.nan] * len(batch)
        keys = [_norm_key(self.problem, r.levels, r.fidelity, r.sample) for r in asked]
        todo, dup_of = self._from_cache(keys, values)
        # budget: evaluate only what fits; an incomplete batch is never told
        allowed = self._affordable(batch, todo)
        complete = allowed == len(todo)
        self.idle_batches = 0 if todo else self.idle_batches + 1
        if self.idle_batches > _MAX_IDLE_BATCHES:
            # every proposal was already evaluated: a small space is exhausted
            return "exhausted"
        run_now = todo[:allowed]
        fresh = self._answer(asked, keys, run_now, values)
        # Replayed failures count towards the streak (a resumed run behaves like an
        # uninterrupted one), but a batch answered only from the journal never aborts:
        # resuming a run that stopped on failures (after fixing the oracle) tries again.
        if fresh and led.consecutive_fail >= self.max_consecutive_failures:
            raise AllFailedError(
                f"{led.consecutive_fail} evaluations in a row failed (last: {led.history[-1].error}); "
                "the fitness function looks broken"
            )
        for idx in run_now:
            self.cache[keys[idx]] = values[idx]
        if not complete:
            hit_evals = self.max_evaluations is not None and led.n_eval >= self.max_evaluations
            return "max_evaluations" if hit_evals else "max_cost"
        for idx, src in dup_of.items():
            values[idx] = values[src]
        self.opt.tell(batch, values)
        return self._after_tell()

    def _from_cache(self, keys: list[tuple[Any, ...]], values: list[float]) -> tuple[list[int], dict[int, int]]:
        """Fill ``values`` from the cache; returns the indices still to answer and the repeats within the batch."""
        todo: list[int] = []
        first_of: dict[tuple[Any, ...], int] = {}
        dup_of: dict[int, int] = {}
        for idx, k in enumerate(keys):
            if k in self.cache:
                values[idx] = self.cache[k]
            elif k in first_of:
                dup_of[idx] = first_of[k]
            else:
                first_of[k] = idx
                todo.append(idx)
        return todo, dup_of

    def _affordable(self, batch: list[Request], todo: list[int]) -> int:
        """How many of ``todo`` (in order) the remaining evaluation and cost budgets pay for."""
        led, max_cost = self.led, self.max_cost
        allowed = len(todo)
        if self.max_evaluations is not None:
            allowed = min(allowed, max(0, self.max_evaluations - led.n_eval))
        if max_cost is None:
            return allowed
        room, fit = max_cost - led.cost, 0
        for idx in todo[:allowed]:
            c = self.problem.cost_of(batch[idx].fidelity)
            if c > room + 1e-9:
                break
            room -= c
            fit += 1
        if fit == 0 and todo and led.n_eval == 0:
            raise ValueError(
                f"max_cost={max_cost:g} does not cover a single evaluation "
                f"(one costs {self.problem.cost_of(batch[todo[0]].fidelity):g}); raise max_cost"
            )
        return fit

    def _answer(
        self, asked: list[Request], keys: list[tuple[Any, ...]], run_now: list[int], values: list[float]
    ) -> list[int]:
        """Answer ``run_now`` from the journal where it can, else from the evaluator; returns the fresh ones."""
        fresh: list[int] = []
        for idx in run_now:
            if self.replay.get(keys[idx]):
                out = self.replay[keys[idx]].pop(0)
                values[idx] = out.value
                self.led.record(asked[idx], out, replayed=True)
            else:
                fresh.append(idx)
        if fresh:
            sink = _Sink(self.led, asked, fresh, values)
            sent = [Request(private_levels(asked[i].levels), asked[i].fidelity, asked[i].sample) for i in fresh]
            outs = self.evaluator.evaluate(sent, on_result=sink)
            sink.finish(outs)
        return fresh

    def _after_tell(self) -> str | None:
        """Trace the recommendation, show progress, and check the stopping rules."""
        led, problem = self.led, self.problem
        rec_levels, rec_value = self.opt.recommend()
        tv = problem.true_value(private_levels(rec_levels)) if rec_levels is not None else None
        shown = min(led.best_value, rec_value) if not problem.uses_fidelity else rec_value
        self.trace.append(TracePoint(led.n_eval, led.cost, shown, tv))
        if self.bar is not None:
            self.bar(led.n_eval, led.cost, shown)
        if self.target is not None and shown <= self.target:
            return "target"
        if self.max_evaluations is not None and led.n_eval >= self.max_evaluations:
            return "max_evaluations"
        if self.max_cost is not None and led.cost >= self.max_cost:
            return "max_cost"
        return None


def _result(
    problem: Problem,
    opt: Optimizer,
    led: _Ledger,
    trace: list[TracePoint],
    stopped_by: str,
    t_start: float,
    n_spot: int,
    optimum: float | None,
    notes: list[str],
) -> Result:
    space = problem.space
    levels, value = opt.recommend()
    if not problem.uses_fidelity and led.best_levels is not None and led.best_value <= value:
        # every value of a fidelity-free problem is exact: the best seen is the best
        value, levels = led.best_value, led.best_levels
    if levels is not None and not math.isfinite(value) and led.best_levels is not None:
        # the recommendation's last evaluation failed: report the best successful one instead
        value, levels = led.best_value, led.best_levels
    if led.best_levels is None and led.history and not math.isfinite(value):
        # nothing succeeded: report an assignment that was asked for (feasible), with no value
        levels, value = led.history[0].levels, math.inf
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
        optimum=optimum,
        best_true_value=problem.true_value(private_levels(levels)),
        n_replayed=sum(e.replayed for e in led.history),
        n_spot_checks=n_spot,
        notes=notes,
    )


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """SIGINTs that arrive inside the block are held and dropped (main thread only; a no-op elsewhere).

    The run is already ending as interrupted (or finished): the block closes the journal and
    builds the result, which a second Ctrl-C of a burst must not turn into a traceback.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: None)
    except (ValueError, OSError):  # no signals here (embedded interpreter)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _check_seed(seed: Any) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")


def spot_check_tolerance(problem: Problem) -> float:
    """Relative tolerance of a resume's spot-checks for ``problem``.

    The problem's ``replay_tolerance`` when it declares one; else ``1e-12`` for a problem
    without fidelity (a deterministic oracle gives the same value again) and ``1e-2`` for one
    with fidelity (same data sample, but GPU reductions need not be bitwise reproducible).

    Raises:
        ValueError: ``replay_tolerance`` is not a number in [0, 1].
    """
    tol = getattr(problem, "replay_tolerance", None)
    if tol is None:
        return 1e-2 if problem.uses_fidelity else 1e-12
    if isinstance(tol, bool) or not isinstance(tol, (int, float, np.integer, np.floating)) or not 0 <= tol <= 1:
        raise ValueError(f"{type(problem).__name__}.replay_tolerance must be a number in [0, 1], got {tol!r}")
    return float(tol)


def _spot_check(
    jr: Journal, problem: Problem, evaluator: Evaluator, records: list[JournalRecord], seed: int, k: int
) -> int:
    """Measure ``k`` journaled successes again (the first, the best, the last, then seed-chosen ones).

    Returns:
        How many evaluations it ran.

    Raises:
        JournalMismatch: one of them gives another value (or fails) now.
    """
    ok = [r for r in records if r.ok]
    if not ok:
        return 0
    chosen: dict[int, JournalRecord] = {}
    for r in (ok[0], min(ok, key=lambda r: r.value), ok[-1]):
        chosen.setdefault(r.index, r)
    rest = [r for r in ok if r.index not in chosen]
    if len(chosen) < k and rest:
        rng = np.random.default_rng(seed)
        for j in rng.choice(len(rest), size=min(k - len(chosen), len(rest)), replace=False):
            chosen.setdefault(rest[int(j)].index, rest[int(j)])
    picks = list(chosen.values())[:k]
    outs = evaluator.evaluate([Request(private_levels(r.levels), r.fidelity, r.sample) for r in picks])
    tol = spot_check_tolerance(problem)
    for rec, out in zip(picks, outs):
        same = out.ok and (out.value == rec.value or math.isclose(out.value, rec.value, rel_tol=tol, abs_tol=0.0))
        if not same:
            shown = np.array2string(rec.levels, threshold=16, separator=",").replace("\n", "")
            now = f"fails now ({out.error})" if not out.ok else f"gives {out.value!r} now"
            raise JournalMismatch(
                f"journal {jr.path} was written by another oracle: its evaluation {rec.index} (levels {shown}"
                + ("" if rec.fidelity is None else f", fidelity {rec.fidelity}")
                + f") has value {rec.value!r} but {now} (relative tolerance {tol:g}); "
                "use a new journal, or the oracle that wrote it"
            )
    return len(picks)


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


def _offer_unit_errors(problem: Problem, opt: Optimizer) -> None:
    """Give an optimizer that wants them the problem's per-unit error estimates (once, before it starts)."""
    if not getattr(opt, "wants_unit_errors", False) or getattr(opt, "has_prior", True):
        return
    est = problem.unit_errors()
    if est is not None:
        opt.set_prior(np.asarray(est, dtype=float))  # type: ignore[attr-defined]


def _as_problem(fn: Any, space: LevelSpace | None) -> Problem:
    if isinstance(fn, Problem):
        if space is not None and space is not fn.space:
            raise ValueError("pass either a Problem or a function with a space, not both")
        return fn
    if space is None:
        raise ValueError("minimize(fn, space): a plain function needs a LevelSpace")
    if not isinstance(space, LevelSpace):
        raise ValueError(f"space must be a LevelSpace, got {type(space).__name__}")
    if not callable(fn):
        raise ValueError(f"fitness must be callable, got {type(fn).__name__}")
    problem = FunctionProblem(_checked(fn), space)
    problem.oracle = fn  # type: ignore[attr-defined]  # what oracle_fingerprint describes
    return problem


def _checked(fn: Callable[..., Any]) -> Callable[..., float]:
    """``fn`` whose return value must be a real number (a str, bool or Decimal raises FitnessTypeError)."""

    @functools.wraps(fn)
    def checked(*args: Any) -> float:
        return fitness_value(fn(*args))

    return checked


def _frozen(levels: np.ndarray) -> np.ndarray:
    """The driver's own read-only copy (journal, history); the oracle never sees this array."""
    out = np.array(levels, dtype=np.int64, copy=True)
    out.flags.writeable = False
    return out


def _check_budget(max_evaluations: int | None, max_cost: float | None, opt: Optimizer) -> None:
    if max_evaluations is not None and (
        not isinstance(max_evaluations, (int, np.integer))
        or isinstance(max_evaluations, bool)
        or not 1 <= max_evaluations <= MAX_EVALUATIONS
    ):
        raise ValueError(
            f"max_evaluations must be a positive integer up to {MAX_EVALUATIONS:.0e}, got {max_evaluations!r}"
        )
    if max_cost is not None and (
        isinstance(max_cost, bool)
        or not isinstance(max_cost, (int, float, np.integer, np.floating))
        or not math.isfinite(max_cost)
        or not 0 < max_cost <= MAX_COST
    ):
        raise ValueError(f"max_cost must be a positive number (finite, up to {MAX_COST:.0e}), got {max_cost!r}")
    if max_evaluations is None and max_cost is None and getattr(opt, "max_generations", None) is None:
        raise ValueError("give a stopping rule: max_evaluations, max_cost or the optimizer's max_generations")


def _check_oracle(jr: Journal, problem: Problem, resume: bool) -> None:
    """Bind a journal to the oracle that wrote it: replaying another function's values is refused."""
    fp = oracle_fingerprint(problem)
    stored = jr.meta("oracle")
    if stored == fp:
        return
    if jr.readonly:
        return
    if len(jr) and not resume:
        what = "an unrecorded oracle" if stored is None else "another oracle"
        raise JournalMismatch(
            f"journal {jr.path} holds {len(jr)} evaluations of {what} ({_oracle_name(problem)}'s code or data "
            "differs), whose values a replay would report; use a new journal, or pass resume=True if it gives "
            "the same values"
        )
    jr.set_meta("oracle", fp)


def _oracle_name(problem: Problem) -> str:
    fn = getattr(problem, "oracle", None) or getattr(problem, "fn", None)
    if fn is not None:
        return str(getattr(fn, "__qualname__", type(fn).__name__))
    return type(problem).__qualname__


def oracle_fingerprint(problem: Problem) -> str:
    """A sha256 of what a problem's values come from, stored in a journal and checked on replay.

    For a plain function: its code (bytecode, constants, names, defaults), recursively
    through the functions it calls by global name, and the data it reads from globals
    and closure cells (numbers, strings, numpy arrays; large arrays by a strided
    sample). Mutable containers and other objects count by their type only, so a
    closure's call counter does not change it. For a :class:`Problem` subclass: its
    class (its :meth:`~Problem.describe` is already part of the journal's identity).

    This is a first filter only: data it does not see (a list, a dict, an object's
    attributes, a data file) is caught by the spot-checks of :func:`minimize`, which
    measure journaled evaluations again before a replay.
    """
    fn = getattr(problem, "oracle", None)
    if fn is None and isinstance(problem, FunctionProblem):
        fn = problem.fn
    h = hashlib.sha256()
    if fn is None:
        h.update(f"class:{type(problem).__module__}.{type(problem).__qualname__}".encode())
    else:
        _hash_callable(h, fn, depth=0, seen={"module": getattr(fn, "__module__", None)})
    return h.hexdigest()


_SAMPLE = 1 << 16  # elements hashed of a large array


def _hash_value(h: Any, v: Any, depth: int, seen: dict[Any, Any]) -> None:
    if v is None or isinstance(v, (bool, int, float, complex, str, bytes, np.generic)):
        h.update(f"{type(v).__name__}:{v!r};".encode())
    elif isinstance(v, np.ndarray):
        h.update(f"nd:{v.dtype.str}:{v.shape};".encode())
        flat = np.ascontiguousarray(v).reshape(-1)
        if flat.size > 4 * _SAMPLE:
            flat = flat[:: max(1, flat.size // _SAMPLE)]
        h.update(flat.tobytes() if flat.dtype != object else repr(flat.tolist()).encode())
    elif isinstance(v, (tuple, frozenset)) and depth < 3:
        h.update(f"{type(v).__name__}{len(v)}(".encode())
        for x in v if isinstance(v, tuple) else sorted(v, key=repr):
            _hash_value(h, x, depth + 1, seen)
        h.update(b")")
    elif isinstance(v, types.CodeType):
        _hash_code(h, v, depth, seen)
    elif callable(v) and depth < 3 and not isinstance(v, type) and getattr(v, "__module__", None) == seen["module"]:
        _hash_callable(h, v, depth + 1, seen)  # a helper of the same module: its code counts
    elif callable(v):  # a library function or a class: by name (an upgrade must not refuse a resume)
        h.update(f"fn:{getattr(v, '__module__', '')}.{getattr(v, '__qualname__', type(v).__qualname__)};".encode())
    else:  # lists, dicts, objects, modules: by type only (their contents may legitimately change)
        h.update(f"obj:{type(v).__module__}.{type(v).__qualname__};".encode())


def _hash_code(h: Any, code: types.CodeType, depth: int, seen: dict[Any, Any]) -> None:
    h.update(code.co_code)
    h.update(repr(code.co_names).encode())
    for c in code.co_consts:
        _hash_value(h, c, depth, seen)


def _hash_callable(h: Any, fn: Any, depth: int, seen: dict[Any, Any]) -> None:
    if id(fn) in seen:
        h.update(b"<recursion>")
        return
    seen[id(fn)] = fn
    if isinstance(fn, functools.partial):
        h.update(b"partial(")
        _hash_callable(h, fn.func, depth, seen)
        _hash_value(h, tuple(fn.args), depth, seen)
        _hash_value(h, tuple(sorted(fn.keywords.items())), depth, seen)
        h.update(b")")
        return
    func = getattr(fn, "__func__", fn)  # a bound method: its function (and its object's type)
    if func is not fn:
        h.update(f"method-of:{type(getattr(fn, '__self__', None)).__qualname__};".encode())
    code = getattr(func, "__code__", None)
    if code is None:
        call = type(fn).__dict__.get("__call__")  # a callable object: its class's __call__
        code = getattr(call, "__code__", None)
        h.update(f"callable:{type(fn).__module__}.{type(fn).__qualname__};".encode())
        if code is None:
            return
        func = call
    _hash_code(h, code, depth, seen)
    _hash_value(h, getattr(func, "__defaults__", None), depth, seen)
    cells = getattr(func, "__closure__", None) or ()
    for name, cell in zip(code.co_freevars, cells):
        try:
            content = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        h.update(f"free:{name}=".encode())
        _hash_value(h, content, depth, seen)
    glb = getattr(func, "__globals__", {})
    for name in code.co_names:
        if name in glb and not isinstance(glb[name], types.ModuleType):
            h.update(f"global:{name}=".encode())
            _hash_value(h, glb[name], depth, seen)


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
