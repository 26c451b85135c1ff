"""``levelsearch bench CONFIG.yaml --out DIR``: optimizers x problems x seeds on equal budgets.

Config (YAML)::

    name: suite                          # title of the report
    seeds: [0, 1, 2]                     # optimizer seeds; every optimizer runs every seed
    budget: {max_evaluations: 1000}      # default budget (evaluations and/or max_cost in fidelity units)
    max_seconds: 120                     # optional wall-time cap per run (reported when it bites);
                                         # an optimizer entry may override it (max_seconds: null = no cap)
    target_relative: 0.01                # target = optimum + 1% of |optimum| (best value found if unknown)
    checkpoints: [0.1, 0.25, 0.5, 1.0]   # fixed-budget table columns, as fractions of the budget
    optimizers:                          # a name, or {name, label, options}
      - evopress
      - {name: dp, label: dp+ls, options: {local_search: true}}
    problems:                            # a problem config ({kind, ...params}) plus optional
      - {label: linear-64x2, kind: linear, n_units: 64, n_levels: 2}   # label, budget, target_relative
      - {label: noisy, kind: noisy, base: {kind: linear}, budget: {max_cost: 3.0e7},
         options: {evopress: {steps: [[1024, 4], [16384, 1]]}}}   # per-problem options by optimizer label

The config is checked against :data:`levelsearch.config.BENCH_SCHEMA` before
anything runs or is written: an unknown key, an empty ``seeds``, a ``max_seconds``
that is not a positive number, a checkpoint outside (0, 1], an option beyond its
bound (``offspring``, ``batch``...) is one line naming the key. Labels (default:
the optimizer's name, the problem's kind) become folder and file names, so they
must be plain names (``A-Z a-z 0-9 . _ -``, not ``.`` or ``..``).

Every (optimizer, problem, seed) runs :func:`levelsearch.minimize` in its own
process (``--workers``, default ``min(2, cpus)``) and is deterministic given the
seed. Optimizers that accept a ``budget`` option (NGOpt) get the evaluation
budget. Progress: one tqdm bar over the whole grid. Every finished run is kept
(``raw/<problem>/<optimizer>/seed<s>.json``): the same command again skips the
runs that finished with the same settings (resume after an interruption).

Output directory: ``raw/<problem>/<optimizer>/seed<s>.csv`` (every evaluation:
index, cumulative cost, value, fidelity, and the recommendation's value after
it), ``ioh/`` (IOHprofiler's ``.info`` + ``.dat`` layout, one folder per
optimizer, for IOHanalyzer), ``convergence_<problem>.png`` (median regret with
IQR band), ``ecdf_<problem>.png``, ``results.json`` and ``report.md``
(fixed-budget and fixed-target tables, EvoPress's cost-to-target ratio).

Measure: the *regret* of the recommendation, ``true value - optimum``, where the
true value is the noise-free value (the measured value on problems without
noise). Without a known optimum, the value itself.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import platform
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from .config import BENCH_SCHEMA, MAX_BENCH_RUNS, check_name, load_yaml, validate
from .driver import minimize, problem_options
from .optimizer import Optimizer, Request, get_optimizer, make_optimizer
from .problem import Problem, make_problem
from .runner import refuse_other_files

__all__ = ["load_bench_config", "parse_bench_config", "run_bench", "add_parser"]


# ----------------------------------------------------------------- config
def load_bench_config(path: str | Path) -> dict[str, Any]:
    """Read and check a bench config against :data:`levelsearch.config.BENCH_SCHEMA`; returns it with
    defaults filled in. Labels become parts of file names, so they must be plain names.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: one line naming the key that is missing or malformed.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"bench config {p} not found; pass the path of a YAML file")
    return parse_bench_config(load_yaml(p, "bench config"), source=str(p))


def parse_bench_config(data: Any, source: str = "bench config") -> dict[str, Any]:
    """:func:`load_bench_config` for a mapping (``source`` heads the error messages)."""
    cfg = validate({} if data is None else data, BENCH_SCHEMA, where=source)
    opts = []
    for i, o in enumerate(cfg["optimizers"]):
        try:
            get_optimizer(o["name"])  # unknown names fail now, not in a worker
            label = check_name(o.get("label", o["name"]), "label")
        except ValueError as exc:
            raise ValueError(f"{source}: optimizers[{i}]: {exc}") from None
        opts.append(
            {
                "name": o["name"],
                "label": label,
                "options": o.get("options") or {},
                "max_seconds": o.get("max_seconds", cfg.get("max_seconds")),
            }
        )
    labels = [o["label"] for o in opts]
    probs = []
    for i, q in enumerate(cfg["problems"]):
        where = f"{source}: problems[{i}]"
        try:
            label = check_name(q.pop("label", q["kind"]), "label")
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        budget = q.pop("budget", None) or cfg.get("budget")
        if not budget:
            raise ValueError(f"{where}: no budget; give budget: {{max_evaluations: N}} here or at the top")
        rel = q.pop("target_relative", cfg.get("target_relative", 0.01))
        overrides = q.pop("options", None) or {}
        for key in overrides:
            if key not in labels:
                raise ValueError(f"{where}.options.{key}: no optimizer has that label (labels: {', '.join(labels)})")
        _check_problem_params(q, where)
        probs.append(
            {"label": label, "config": q, "budget": dict(budget), "target_relative": float(rel), "options": overrides}
        )
    for key, items in (("optimizer", opts), ("problem", probs)):
        seen = [x["label"] for x in items]
        if len(set(seen)) != len(seen):
            dup = next(x for x in seen if seen.count(x) > 1)
            raise ValueError(f"{source}: {key} labels must be unique, {dup!r} is used twice")
    n_runs = len(cfg["seeds"]) * len(opts) * len(probs)
    if n_runs > MAX_BENCH_RUNS:
        raise ValueError(f"{source}: {n_runs} runs (seeds x optimizers x problems) is over the limit {MAX_BENCH_RUNS}")
    return {
        "name": str(cfg.get("name", Path(source).stem)),
        "seeds": cfg["seeds"],
        "max_seconds": cfg.get("max_seconds"),
        "checkpoints": sorted(float(c) for c in cfg["checkpoints"]),
        "optimizers": opts,
        "problems": probs,
    }


def _check_is_a_bench_directory(out: Path) -> None:
    """Refuse a directory that holds files but no bench (no ``raw/`` nor ``results.json``): its report.md,
    results.json or plots would be overwritten (``--out .`` in a project folder)."""
    if out.is_dir() and not (out / "raw").is_dir() and not (out / "results.json").is_file():
        refuse_other_files(out, "bench (raw/, results.json)")


def _check_problem_params(config: dict[str, Any], where: str) -> None:
    """An unknown problem kind or parameter is refused before anything runs (the problem is built later,
    in a worker)."""
    from .problem import _check_params, get_problem_factory

    kind = str(config["kind"])
    try:
        _check_params(get_problem_factory(kind), {k: v for k, v in config.items() if k != "kind"}, kind)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


# ----------------------------------------------------------------- one run
class _Pinned(Problem):
    """A problem whose optimum was computed once in the parent process (it can take a minute)."""

    def __init__(self, inner: Problem, optimum: float | None) -> None:
        super().__init__(inner.space)
        self.inner, self.optimum, self.name = inner, optimum, inner.name
        self.max_fidelity, self.uses_fidelity = inner.max_fidelity, inner.uses_fidelity

    def evaluate(self, levels: np.ndarray, fidelity: int | None = None, sample: int | None = None) -> float:
        return self.inner.evaluate(levels, fidelity, sample)

    def true_value(self, levels: np.ndarray) -> float | None:
        return self.inner.true_value(levels)

    def cost_of(self, fidelity: int | None) -> float:
        return self.inner.cost_of(fidelity)

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()

    def unit_errors(self) -> np.ndarray | None:
        return self.inner.unit_errors()

    def default_schedule(self, optimizer: str = "evopress") -> dict[str, Any] | None:
        return self.inner.default_schedule(optimizer)

    def default_start(self) -> np.ndarray | None:
        return self.inner.default_start()


class _WallCap(Optimizer):
    """Stops the wrapped optimizer once ``seconds`` of wall time have passed."""

    def __init__(self, inner: Optimizer, seconds: float | None) -> None:
        super().__init__(inner.space, seed=inner.seed)
        self.inner, self.seconds, self.t0 = inner, seconds, time.perf_counter()
        self.multi_fidelity = inner.multi_fidelity
        self.capped = False

    def ask(self) -> list[Request]:
        return self.inner.ask()

    def tell(self, requests: Sequence[Request], values: Sequence[float]) -> None:
        self.inner.tell(requests, values)

    def stop(self) -> bool:
        if self.seconds is not None and time.perf_counter() - self.t0 > self.seconds:
            self.capped = True
            return True
        return self.inner.stop()

    def recommend(self) -> tuple[np.ndarray | None, float]:
        return self.inner.recommend()

    def notes(self) -> list[str]:
        return self.inner.notes()


def _problem_facts(config: dict[str, Any]) -> dict[str, Any]:
    try:
        problem = make_problem(config)
    except TypeError as exc:  # a parameter of the wrong type deep in the factory
        raise ValueError(f"problem {config.get('kind')!r}: bad parameter ({exc})") from None
    return {"optimum": problem.optimum, "n_units": problem.space.n_units, "uses_fidelity": problem.uses_fidelity}


def _run_one(task: dict[str, Any]) -> dict[str, Any]:
    """Run one (optimizer, problem, seed) and write its raw CSV; returns the curve of the recommendation."""
    import warnings

    warnings.simplefilter("ignore")
    prob = _Pinned(make_problem(task["problem"]), task["optimum"])
    # the problem's schedule and start where the task's options give none (as minimize would)
    options, defaults = problem_options(prob, task["optimizer"], task["options"])
    budget = task["budget"]
    if "budget" in inspect.signature(get_optimizer(task["optimizer"])).parameters and "budget" not in options:
        options["budget"] = int(budget.get("max_evaluations") or 10_000)
    opt = _WallCap(make_optimizer(task["optimizer"], prob.space, seed=task["seed"], **options), task["max_seconds"])
    res = minimize(
        prob,
        optimizer=opt,
        max_evaluations=budget.get("max_evaluations"),
        max_cost=budget.get("max_cost"),
        seed=task["seed"],
    )
    noisy = prob.uses_fidelity
    curve = [
        (tp.n_evaluations, tp.cost, tp.true_value if noisy and tp.true_value is not None else tp.value)
        for tp in res.trace
    ]
    path = Path(task["csv"])
    path.parent.mkdir(parents=True, exist_ok=True)
    rows, k, cost = ["evaluation,cost,value,fidelity,recommended"], 0, 0.0
    for i, ev in enumerate(res.history, start=1):
        cost += prob.cost_of(ev.fidelity)
        while k + 1 < len(curve) and curve[k + 1][0] <= i:
            k += 1
        rec = curve[k][2] if curve and curve[k][0] <= i else math.nan
        fid = "" if ev.fidelity is None else ev.fidelity
        rows.append(f"{i},{cost:.10g},{ev.value:.10g},{fid},{rec:.10g}")
    path.write_text("\n".join(rows) + "\n")
    done = {
        "optimizer": task["label"],
        "problem": task["problem_label"],
        "seed": task["seed"],
        "curve": curve,
        "values": [ev.value for ev in res.history],
        "n_evaluations": res.n_evaluations,
        "cost": res.cost,
        "final": res.best_true_value if res.best_true_value is not None else res.best_value,
        "stopped_by": "wall-time cap" if opt.capped else res.stopped_by,
        "wall_seconds": res.wall_seconds,
        "notes": res.notes,  # fallbacks the optimizer took (e.g. EvoPress's model jumps turned off)
        "defaults": defaults,  # the schedule and start used, and where each came from
    }
    # the finished run, keyed by its task: a rerun of the same grid into the same directory reuses it
    _atomic_write(path.with_suffix(".json"), json.dumps({"task": _task_key(task), "result": done}, default=_json))
    return done


def _task_key(task: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps({k: v for k, v in task.items() if k != "csv"}, default=_json, sort_keys=True))


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _finished(task: dict[str, Any]) -> dict[str, Any] | None:
    """The result of ``task`` from an earlier run of the grid, if that run finished with the same task."""
    path = Path(task["csv"]).with_suffix(".json")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("task") != _task_key(task):
        return None
    return data.get("result")


# ----------------------------------------------------------------- the grid
def run_bench(
    config: dict[str, Any],
    out: str | Path,
    *,
    workers: int | None = None,
    progress: bool = True,
    report_only: bool = False,
) -> Path:
    """Run every (optimizer, problem, seed) of ``config`` and write the report into ``out``; returns report.md.

    With ``report_only`` nothing is run: the report covers the runs of the grid that finished before
    (an interrupted grid's report, headed by how many of its runs it holds)."""
    from . import bench_report  # the tables and plots

    out = Path(out)
    for key in ("optimizers", "problems"):  # labels are parts of file names: plain names only
        for item in config[key]:
            check_name(item["label"], f"{key[:-1]} label")
    workers = workers or min(2, os.cpu_count() or 1)
    t0 = time.perf_counter()
    with _one_blas_thread_in_workers():
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))
        facts = _all_problem_facts(pool, config["problems"])
        _check_is_a_bench_directory(out)
        out.mkdir(parents=True, exist_ok=True)
        problems = [{**pr, **f} for pr, f in zip(config["problems"], facts)]
        with pool:
            results, missing = _run_grid(pool, _grid_tasks(config, problems, out), progress, report_only)
    meta = {
        "config": config,
        "workers": workers,
        "wall_seconds": time.perf_counter() - t0,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "problems": problems,
        "missing_runs": missing,
    }
    (out / "results.json").write_text(json.dumps({"meta": meta, "runs": results}, default=_json) + "\n")
    return bench_report.write_report(out, meta, results)


def _all_problem_facts(pool: ProcessPoolExecutor, problems: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each problem's known optimum, size and fidelity use, computed in the workers (enumeration, MILP).

    A problem that cannot be built is refused here, before anything is written into the output directory.
    """
    pending = [pool.submit(_problem_facts, pr["config"]) for pr in problems]
    facts = []
    try:
        for pr, fut in zip(problems, pending):
            try:
                facts.append(fut.result())
            except ValueError as exc:
                raise ValueError(f"problem {pr['label']}: {exc}") from None
    except BaseException:
        pool.shutdown(cancel_futures=True)
        raise
    return facts


def _grid_tasks(config: dict[str, Any], problems: list[dict[str, Any]], out: Path) -> list[dict[str, Any]]:
    """One task per (seed, problem, optimizer), seed-major: an interrupted grid holds every
    (problem, optimizer) cell for its first seeds."""
    return [
        {
            "optimizer": o["name"],
            "label": o["label"],
            "problem": pr["config"],
            "options": {**o["options"], **(pr["options"].get(o["label"]) or {})},
            "problem_label": pr["label"],
            "optimum": pr["optimum"],
            "budget": pr["budget"],
            "seed": s,
            "max_seconds": o.get("max_seconds", config.get("max_seconds")),
            "csv": str(out / "raw" / pr["label"] / o["label"] / f"seed{s}.csv"),
        }
        for s in config["seeds"]
        for pr in problems
        for o in config["optimizers"]
    ]


def _run_grid(
    pool: ProcessPoolExecutor, tasks: list[dict[str, Any]], progress: bool, report_only: bool
) -> tuple[list[dict[str, Any]], int]:
    """Run the tasks that have not finished before (none with ``report_only``); returns every finished
    run (a failed one as its error) and how many were left unrun."""
    from tqdm import tqdm

    results: list[dict[str, Any]] = []
    bar = tqdm(total=len(tasks), desc="bench", unit="run", disable=not progress)
    todo = []
    for t in tasks:
        prev = _finished(t)
        if prev is not None:
            results.append(prev)
            bar.update(1)
        else:
            todo.append(t)
    missing = len(todo) if report_only else 0
    if report_only:
        todo = []
    futures = {pool.submit(_run_one, t): t for t in todo}
    for fut in as_completed(futures):
        t = futures[fut]
        try:
            results.append(fut.result())
        except Exception as exc:  # one broken run must not lose the grid
            results.append(
                {
                    "optimizer": t["label"],
                    "problem": t["problem_label"],
                    "seed": t["seed"],
                    "error": f"{type(exc).__name__}: {exc}",
                }
            )
        bar.update(1)
        bar.set_postfix_str(f"{t['label']} on {t['problem_label']}")
    bar.close()
    return results, missing


@contextmanager
def _one_blas_thread_in_workers() -> Iterator[None]:
    """One BLAS thread per spawned worker (threads of parallel runs on a small machine only fight each other).

    The variables are set only while the pool starts its workers and restored afterwards, so the calling
    process (a notebook, a test session) keeps all its threads for what it runs next.
    """
    names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    saved = {v: os.environ.get(v) for v in names}
    for v in names:
        os.environ.setdefault(v, "1")
    try:
        yield
    finally:
        for v, old in saved.items():
            if old is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = old


def _json(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


# ----------------------------------------------------------------- CLI
def add_parser(subparsers: Any) -> None:
    """Add ``levelsearch bench CONFIG --out DIR [--workers N]``."""
    p = subparsers.add_parser("bench", help="run optimizers x problems x seeds on equal budgets and write a report")
    p.add_argument("config", help="bench YAML (see levelsearch.bench)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--workers", type=int, default=None, help="parallel processes (default min(2, cpus))")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--report-only", action="store_true", help="run nothing: report the runs of this grid that finished in --out"
    )
    p.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    if args.workers is not None and not 1 <= args.workers <= 1024:
        raise ValueError(f"--workers must be an integer in 1..1024, got {args.workers}")
    if not str(args.out).strip():
        raise ValueError("--out is empty; name the bench's output directory, e.g. --out bench-results")
    report = run_bench(
        load_bench_config(args.config),
        args.out,
        workers=args.workers,
        progress=not args.no_progress,
        report_only=args.report_only,
    )
    print(report)
    return 0
