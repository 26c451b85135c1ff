"""Throughput of serial vs Ray evaluation on an oracle with a fixed sleep.

Every evaluation of the oracle sleeps ``--sleep`` seconds (default 20 ms) and
then returns a linear fitness, so the ideal throughput is ``workers / sleep``
evaluations per second; what Ray adds on top of the sleep is the scheduling
overhead per evaluation. Batches have the size of one EvoPress selection step
(``--batch``, default 16).

Usage::

    .venv/bin/python bench/ray_scaling.py [--sleep 0.02] [--evaluations 320] [--batch 16]

Prints one row per evaluator: wall seconds, evaluations per second, speed-up
over serial, and overhead per evaluation (wall time per evaluation minus the
ideal ``sleep / workers``), then the same for a whole ``minimize`` run.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from levelsearch import Problem, SerialEvaluator, make_problem, minimize
from levelsearch.optimizer import Request

BASE = {"kind": "linear", "n_units": 32, "n_levels": 2, "total": 8, "seed": 0}


class SleepyLinear(Problem):
    """The linear synthetic problem, sleeping a fixed time per evaluation (a stand-in for a GPU oracle)."""

    name = "sleepy-linear"

    def __init__(self, sleep: float) -> None:
        self.inner = make_problem(BASE)
        super().__init__(self.inner.space)
        self.sleep = sleep

    def evaluate(self, levels: np.ndarray, fidelity: int | None = None, sample: int | None = None) -> float:
        time.sleep(self.sleep)
        return self.inner.evaluate(levels)

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "sleep": self.sleep}


class _Factory:
    """Picklable zero-argument factory: each Ray worker builds its own oracle."""

    def __init__(self, sleep: float) -> None:
        self.sleep = sleep

    def __call__(self) -> SleepyLinear:
        return SleepyLinear(self.sleep)


def _batches(problem: Problem, n: int, size: int) -> list[list[Request]]:
    rng = np.random.default_rng(0)
    reqs = [Request(problem.space.sample(rng)) for _ in range(n)]
    return [reqs[i : i + size] for i in range(0, n, size)]


def _time_batches(evaluator, batches: list[list[Request]]) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    for b in batches:
        evaluator.evaluate(b)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sleep", type=float, default=0.02, help="seconds per evaluation (default 0.02)")
    ap.add_argument("--evaluations", type=int, default=320, help="evaluations per measurement (default 320)")
    ap.add_argument("--batch", type=int, default=16, help="requests per batch (default 16)")
    args = ap.parse_args()

    import ray

    from levelsearch.ray_evaluator import RayEvaluator

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    problem = SleepyLinear(args.sleep)
    batches = _batches(problem, args.evaluations, args.batch)
    n = args.evaluations
    print(
        f"oracle sleeps {args.sleep * 1e3:.1f} ms; {n} evaluations in batches of {args.batch}; "
        f"{os.cpu_count()} CPU cores; ray {ray.__version__}"
    )
    rows: list[tuple[str, int, float]] = [("serial", 1, _time_batches(SerialEvaluator(problem), batches))]
    for workers in (1, 2):
        with RayEvaluator(_Factory(args.sleep), workers=workers) as ev:
            _time_batches(ev, batches[:1])  # warm-up: workers started, code shipped
            rows.append((f"ray x{workers}", workers, _time_batches(ev, batches)))
    serial = rows[0][2]
    print(f"{'evaluator':10s} {'wall s':>8s} {'eval/s':>8s} {'speed-up':>9s} {'overhead ms/eval':>17s}")
    for name, workers, wall in rows:
        overhead = (wall / n - args.sleep / workers) * 1e3
        print(f"{name:10s} {wall:8.2f} {n / wall:8.1f} {serial / wall:8.2f}x {overhead:17.2f}")

    # the same through minimize (journal off): batches come from EvoPress' selection steps
    print("\nminimize(EvoPress, offspring 16) for the same number of evaluations:")
    opts = {"offspring": args.batch - 1}
    t0 = time.perf_counter()
    ref = minimize(problem, options=opts, seed=0, max_evaluations=n)
    walls = [("serial", time.perf_counter() - t0, ref)]
    for workers in (1, 2):
        with RayEvaluator(_Factory(args.sleep), workers=workers) as ev:
            _time_batches(ev, batches[:1])
            t0 = time.perf_counter()
            res = minimize(problem, options=opts, seed=0, max_evaluations=n, evaluator=ev)
            walls.append((f"ray x{workers}", time.perf_counter() - t0, res))
    for name, wall, res in walls:
        same = res.best_levels.tolist() == ref.best_levels.tolist() and res.best_value == ref.best_value
        print(f"{name:10s} {wall:8.2f} s  {n / wall:8.1f} eval/s  best {res.best_value:.6g}  same as serial: {same}")
    ray.shutdown()


if __name__ == "__main__":
    main()
