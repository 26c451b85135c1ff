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

from .config import RunConfig, parse_config
from .driver import Result, minimize
from .evaluators import Evaluator, SerialEvaluator
from .problem import Problem, make_problem

__all__ = ["run_config", "resume_dir", "make_evaluator", "summary_of"]

JOURNAL = "journal.db"
CONFIG = "config.yaml"
SUMMARY = "summary.json"


def make_evaluator(config: RunConfig, problem: Problem) -> Evaluator:
    """The evaluator a config asks for (serial by default; Ray when ``kind: ray``)."""
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


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cannot create output directory {out}: {exc.strerror}") from None
    if not os.access(out, os.W_OK):
        raise ValueError(f"output directory {out} is not writable")


def summary_of(config: RunConfig, problem: Problem, result: Result, wall: float) -> dict[str, Any]:
    return {
        "problem": problem.name,
        "optimizer": config.optimizer,
        "seed": config.seed,
        "best_value": float(result.best_value),
        "best_levels": [int(x) for x in result.best_levels],
        "n_evaluations": int(result.n_evaluations),
        "cost": float(result.cost),
        "optimum": None if problem.optimum is None else float(problem.optimum),
        "best_true_value": None if result.best_true_value is None else float(result.best_true_value),
        "n_failures": int(result.n_failures),
        "stopped_by": result.stopped_by,
        "wall_seconds": round(wall, 3),
    }


def run_config(config: RunConfig, out: str | Path, *, progress: bool = True, plot: bool = True) -> dict[str, Any]:
    """Run (or continue) ``config`` in directory ``out`` and return the summary.

    Raises:
        ValueError: bad config, unwritable directory, or a journal of another run.
    """
    out = Path(out)
    _check_writable(out)
    cfg_path = out / CONFIG
    if cfg_path.exists():
        try:
            stored = yaml.safe_load(cfg_path.read_text())
        except yaml.YAMLError:
            stored = None
        if stored is not None and parse_config(stored, str(cfg_path)).identity() != config.identity():
            raise ValueError(
                f"{out} already holds a run of a different config; choose a new --out directory "
                "(nothing there was changed)"
            )
    problem = make_problem(config.problem)
    evaluator = make_evaluator(config, problem)
    if not cfg_path.exists():
        tmp = cfg_path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        tmp.replace(cfg_path)
    from . import __version__

    t0 = time.perf_counter()
    try:
        result = minimize(
            problem,
            optimizer=config.optimizer,
            options=config.optimizer_options,
            seed=config.seed,
            max_evaluations=config.max_evaluations,
            max_cost=config.max_cost,
            evaluator=evaluator,
            journal=out / JOURNAL,
            identity={"levelsearch": __version__.split(".")[0]},
            max_consecutive_failures=config.max_consecutive_failures,
            progress=progress,
        )
    finally:
        evaluator.close()
    wall = time.perf_counter() - t0
    summary = summary_of(config, problem, result, wall)
    summary["n_replayed"] = int(result.n_replayed)
    if result.stopped_by == "interrupted":
        summary["resume"] = f"levelsearch resume {out}"
    tmp = out / (SUMMARY + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    tmp.replace(out / SUMMARY)
    if plot and result.trace:
        from .plots import plot_convergence

        plot_convergence(
            result.trace,
            out / "convergence.png",
            title=f"{problem.name} · {config.optimizer} · seed {config.seed}",
            optimum=problem.optimum,
            by_cost=problem.uses_fidelity,
        )
    np.save(out / "best_levels.npy", result.best_levels)
    return summary


def resume_dir(out: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """Continue the run stored in ``out`` (its ``config.yaml`` and journal).

    Raises:
        FileNotFoundError: ``out`` holds no run.
    """
    out = Path(out)
    cfg_path = out / CONFIG
    if not cfg_path.is_file():
        raise FileNotFoundError(
            f"{out} holds no run (no {CONFIG}); start one with `levelsearch run CONFIG --out {out}`"
        )
    try:
        data = yaml.safe_load(cfg_path.read_text())
    except yaml.YAMLError:
        raise ValueError(f"{cfg_path} is not valid YAML") from None
    return run_config(parse_config(data, str(cfg_path)), out, progress=progress)
