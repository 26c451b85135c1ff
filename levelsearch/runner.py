"""Run a config into a run directory: journal, summary and plot (what ``levelsearch run`` does).

A run directory holds ``config.yaml`` (the validated config), ``journal.db``
(every evaluation, written before the optimizer is told), ``summary.json`` and
``convergence.png``. Running into a directory that already has a journal of
the same config resumes it; a journal of another config is refused.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .config import RunConfig, load_yaml, parse_config
from .driver import Result, minimize, problem_options, run_identity
from .evaluators import Evaluator, SerialEvaluator
from .journal import Journal
from .optimizer import make_optimizer
from .problem import Problem, make_problem

__all__ = ["run_config", "resume_dir", "make_evaluator", "summary_of", "DirectoryLock"]

JOURNAL = "journal.db"
CONFIG = "config.yaml"
SUMMARY = "summary.json"


def make_evaluator(config: RunConfig, problem: Problem) -> Evaluator:
    """The evaluator a config asks for (serial by default; Ray when ``kind: ray``).

    Raises:
        ValueError: unknown kind or options, or Ray asked for but not installed.
    """
    ev = dict(config.evaluator)
    kind = ev.pop("kind", "serial")
    retries = ev.pop("retries", 0)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"evaluator.retries must be an integer >= 0, got {retries!r}")
    if kind == "serial":
        if ev:
            raise ValueError(f"evaluator: unknown key {sorted(ev)[0]!r} for kind serial (allowed: retries)")
        return SerialEvaluator(problem, retries=retries)
    if kind == "ray":
        try:
            from .ray_evaluator import RayEvaluator
        except ImportError:
            raise ValueError("evaluator kind 'ray' needs Ray: pip install 'levelsearch[dist]'") from None
        return RayEvaluator(config.problem, retries=retries, **ev)
    raise ValueError(f"unknown evaluator kind {kind!r}; use serial or ray")


def _make_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"output directory {out} is a file; choose a directory with --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cannot create output directory {out} ({exc.strerror}); choose another --out") from None


def _check_writable(out: Path) -> None:
    probe = out / f".levelsearch-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"output directory {out} is not writable ({exc.strerror}); choose another --out") from None


class DirectoryLock:
    """An exclusive advisory lock on a run directory, taken before anything is written into it.

    ``flock`` on the directory itself (no lock file is created), released when closed or
    when the process ends, also when it is killed. A second run or resume into the same
    directory is refused with a ``ValueError`` while the first holds it.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        try:
            import fcntl
        except ImportError:  # Windows: no advisory lock
            return
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise ValueError(
                f"run directory {self.path} is in use by another levelsearch process; "
                "wait for it or choose another --out"
            ) from None
        self._fd = fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DirectoryLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _build_problem(config: RunConfig) -> Problem:
    try:
        return make_problem(config.problem)
    except TypeError as exc:  # a parameter of the wrong type deep in the factory
        raise ValueError(f"problem {config.problem.get('kind')!r}: bad parameter ({exc})") from None


def _check_optimizer(config: RunConfig, problem: Problem) -> None:
    """Build the optimizer once, before the directory is touched: bad options and a budget
    that cannot pay for one evaluation are refused up front."""
    options, _ = problem_options(problem, config.optimizer, config.optimizer_options)
    opt = make_optimizer(config.optimizer, problem.space, seed=config.seed, **options)
    if config.max_cost is not None:
        first = opt.ask()
        if first and problem.cost_of(first[0].fidelity) > config.max_cost:
            raise ValueError(
                f"budget.max_cost={config.max_cost:g} does not cover a single evaluation "
                f"(the first costs {problem.cost_of(first[0].fidelity):g}); raise max_cost"
            )


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def summary_of(config: RunConfig, problem: Problem, result: Result, wall: float) -> dict[str, Any]:
    """What ``summary.json`` holds: the run's settings, its result and its ``notes`` (see ``Result.notes``)."""
    return {
        "problem": problem.name,
        "optimizer": config.optimizer,
        "seed": config.seed,
        # JSON has no inf: null when no evaluation succeeded
        "best_value": float(result.best_value) if np.isfinite(result.best_value) else None,
        "best_levels": [int(x) for x in result.best_levels],
        "n_evaluations": int(result.n_evaluations),
        "cost": float(result.cost),
        "optimum": None if result.optimum is None else float(result.optimum),
        "best_true_value": None if result.best_true_value is None else float(result.best_true_value),
        "n_failures": int(result.n_failures),
        "stopped_by": result.stopped_by,
        # why the optimizer stopped the run (e.g. EvoPress's stopping rule); "" when something else did
        "stop_reason": result.stop_reason,
        # the schedule and start the optimizer used and where each came from (problem, options, optimizer)
        "defaults": result.defaults,
        "wall_seconds": round(wall, 3),
        # fallbacks the optimizer or evaluator took (e.g. EvoPress's model jumps turned off); [] when none
        "notes": list(result.notes),
    }


def run_config(config: RunConfig, out: str | Path, *, progress: bool = True, plot: bool = True) -> dict[str, Any]:
    """Run (or continue) ``config`` in directory ``out`` and return the summary.

    Everything a user can get wrong (problem, optimizer options, budget, the
    directory, a journal of another run) is checked before anything in ``out``
    is written. The directory is locked before anything is written into it, so
    two runs started together into one directory cannot mix (the second is
    refused). A directory holding a run of the same config is continued (its
    journal replayed); the budget may be raised to run longer.

    Raises:
        ValueError: bad config, unwritable directory, or a journal of another run.
        AllFailedError: the oracle failed ``max_consecutive_failures`` times in a row.
    """
    if not str(out).strip():
        raise ValueError("--out is empty; name a run directory, e.g. --out runs/first")
    out = Path(out)
    problem = _build_problem(config)
    _check_optimizer(config, problem)
    _make_dir(out)
    with DirectoryLock(out):  # before anything is written: two runs racing for one directory cannot mix
        _check_writable(out)
        _check_is_a_run_directory(out)
        return _run_locked(config, problem, out, progress=progress, plot=plot)


def _check_is_a_run_directory(out: Path) -> None:
    """Refuse a directory that holds files but no run: its summary.json or plots would be overwritten
    (``--out .`` in a project folder, a typo naming another tool's output)."""
    if not (out / CONFIG).exists():
        refuse_other_files(out, f"run ({CONFIG})")


def refuse_other_files(out: Path, what: str) -> None:
    """A one-line ``ValueError`` when ``out`` holds any file: it holds no ``what`` (the caller checked), so
    writing there would overwrite someone else's files."""
    others = sorted(p.name for p in out.iterdir())
    if others:
        where = "the current directory" if out.resolve() == Path.cwd().resolve() else f"output directory {out}"
        raise ValueError(
            f"{where} holds other files ({others[0]}{', ...' if len(others) > 1 else ''}) and no {what}; "
            "choose a new or empty --out directory"
        )


def _check_budget_covers_the_journal(config: RunConfig, problem: Problem, journal: Journal, out: Path) -> None:
    """A budget below what the journal already spent would replay only part of the run and write a
    summary worse than the one on disk: refused, naming what was spent."""
    spent = len(journal)
    if config.max_evaluations is not None and spent > config.max_evaluations:
        raise ValueError(
            f"budget.max_evaluations={config.max_evaluations} is below the {spent} evaluations {out} already "
            f"spent; give at least {spent} (or choose a new --out directory)"
        )
    if config.max_cost is not None and spent:
        cost = sum(problem.cost_of(r.fidelity) for r in journal.records())
        if cost > config.max_cost * (1 + 1e-12):
            raise ValueError(
                f"budget.max_cost={config.max_cost:g} is below the cost {cost:g} {out} already spent; "
                f"give at least {cost:g} (or choose a new --out directory)"
            )


def _run_locked(config: RunConfig, problem: Problem, out: Path, *, progress: bool, plot: bool) -> dict[str, Any]:
    from . import __version__

    cfg_path = out / CONFIG
    if cfg_path.exists():
        try:
            stored = load_yaml(cfg_path, "run config")
        except ValueError as exc:
            raise ValueError(f"{exc}; choose a new --out directory") from None
        if parse_config(stored, str(cfg_path)).identity() != config.identity():
            raise ValueError(
                f"{out} already holds a run of a different config; choose a new --out directory "
                "(nothing there was changed)"
            )
    identity = run_identity(
        problem, config.optimizer, config.optimizer_options, config.seed, {"levelsearch": _major(__version__)}
    )
    journal: Journal | None = None
    if (out / JOURNAL).exists():  # refuse a damaged or foreign journal before anything is written
        journal = Journal(out / JOURNAL, identity=identity)
        try:
            _check_budget_covers_the_journal(config, problem, journal, out)
        except BaseException:
            journal.close()
            raise
    evaluator: Evaluator | None = None
    try:
        text = yaml.safe_dump(config.to_dict(), sort_keys=False)
        if not cfg_path.exists() or cfg_path.read_text() != text:
            _write_atomic(cfg_path, text)  # same identity: at most the budget or evaluator changed
        if journal is None:  # config.yaml first: a directory with a journal always says what wrote it
            journal = Journal(out / JOURNAL, identity=identity)
        journal.set_meta("config", config.to_dict())
        journal.set_meta("levelsearch_version_last", __version__)
        evaluator = make_evaluator(config, problem)
        t0 = time.perf_counter()
        result = minimize(
            problem,
            optimizer=config.optimizer,
            options=config.optimizer_options,
            seed=config.seed,
            max_evaluations=config.max_evaluations,
            max_cost=config.max_cost,
            evaluator=evaluator,
            journal=journal,
            max_consecutive_failures=config.max_consecutive_failures,
            progress=progress,
        )
    finally:
        if evaluator is not None:
            evaluator.close()
        if journal is not None:
            journal.close()
    wall = time.perf_counter() - t0
    summary = summary_of(config, problem, result, wall)
    summary["n_replayed"] = int(result.n_replayed)
    if result.stopped_by == "interrupted":
        summary["resume"] = f"levelsearch resume {out}"
    _write_atomic(out / SUMMARY, json.dumps(summary, indent=2) + "\n")
    if plot and result.trace:
        from .plots import plot_convergence

        plot_convergence(
            result.trace,
            out / "convergence.png",
            title=f"{problem.name} · {config.optimizer} · seed {config.seed}",
            optimum=result.optimum,
            by_cost=problem.uses_fidelity,
        )
    np.save(out / "best_levels.npy", result.best_levels)
    return summary


def _major(version: str) -> str:
    return version.split(".")[0]


def resume_dir(out: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """Continue the run stored in ``out`` (its ``config.yaml`` and journal; the journal's path works too).

    Raises:
        FileNotFoundError: ``out`` holds no run.
    """
    out = Path(out)
    if out.is_file() and out.name == JOURNAL:
        out = out.parent
    cfg_path = out / CONFIG
    if not cfg_path.is_file():
        raise FileNotFoundError(
            f"{out} holds no run (no {CONFIG}); start one with `levelsearch run CONFIG --out {out}`"
        )
    data = load_yaml(cfg_path, "run config")
    return run_config(parse_config(data, str(cfg_path)), out, progress=progress)
