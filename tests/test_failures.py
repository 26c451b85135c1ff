"""Failing oracles: failures are journaled, never win, retried when asked, and a broken oracle stops the run."""

from __future__ import annotations

import json
import math
import zlib

import numpy as np
import pytest

from levelsearch import AllFailedError, Journal, LevelSpace, SerialEvaluator, make_problem, minimize
from levelsearch.cli import main
from levelsearch.problem import Problem, register_problem

LINEAR = {"kind": "linear", "n_units": 24, "n_levels": 2, "total": 6, "seed": 0}


def _bucket(levels: np.ndarray) -> int:
    """A deterministic pseudo-random number 0..99 per assignment."""
    return zlib.crc32(np.ascontiguousarray(levels, dtype=np.int64).tobytes()) % 100


class FlakyLinear(Problem):
    """The linear problem, except that 10% of assignments fail: 5% raise, 5% return NaN."""

    name = "flaky-linear"
    calls_by_assignment: dict[bytes, int] = {}  # across instances (the CLI builds its own)

    def __init__(self, fail_percent: int = 10, **base: object) -> None:
        self.inner = make_problem({"kind": "linear", **base})
        super().__init__(self.inner.space)
        self.fail_percent = fail_percent
        self.calls = 0

    def evaluate(self, levels, fidelity=None, sample=None):
        self.calls += 1
        key = np.asarray(levels, dtype=np.int64).tobytes()
        FlakyLinear.calls_by_assignment[key] = FlakyLinear.calls_by_assignment.get(key, 0) + 1
        b = _bucket(levels)
        if b < self.fail_percent // 2:
            raise RuntimeError("CUDA error: device-side assert triggered")
        if b < self.fail_percent:
            return float("nan")
        return self.inner.evaluate(levels)

    def describe(self):
        return {"name": self.name, "fail_percent": self.fail_percent}


register_problem("flaky-linear", FlakyLinear, replace=True)


def test_an_oracle_failing_on_ten_percent_of_calls_completes_and_journals_the_failures(tmp_path):
    problem = FlakyLinear(**LINEAR)
    res = minimize(problem, options={"offspring": 12}, seed=0, max_evaluations=400, journal=tmp_path / "j.db")
    assert res.stopped_by == "max_evaluations" and res.n_evaluations == 400
    failed = [e for e in res.history if e.error is not None]
    assert 15 <= len(failed) == res.n_failures <= 80  # about 10% of 400
    assert any("RuntimeError: CUDA error" in e.error for e in failed)
    assert any(e.error == "fitness returned NaN" for e in failed)
    with Journal(tmp_path / "j.db", readonly=True) as jr:
        journal_failures = [r for r in jr.records() if not r.ok]
    assert len(journal_failures) == len(failed)
    assert all(r.value == math.inf for r in journal_failures)


def test_a_failed_candidate_is_never_reported_as_best(tmp_path):
    problem = FlakyLinear(**LINEAR)
    res = minimize(problem, options={"offspring": 12}, seed=1, max_evaluations=400)
    failed_keys = {e.levels.tobytes() for e in res.history if e.error is not None}
    assert res.best_levels.tobytes() not in failed_keys
    assert _bucket(res.best_levels) >= problem.fail_percent
    assert math.isfinite(res.best_value) and res.best_value == problem.inner.evaluate(res.best_levels)
    assert all(math.isfinite(t.value) for t in res.trace)


def test_exceptions_are_retried_but_nan_is_not():
    space = LevelSpace(2, n_units=10, total=3)
    attempts: dict[bytes, int] = {}

    def fn(levels):
        k = levels.tobytes()
        attempts[k] = attempts.get(k, 0) + 1
        if levels[0] == 1:
            return float("nan")
        if attempts[k] == 1:  # the first call of every assignment raises, the second succeeds
            raise TimeoutError("lost the GPU")
        return float(levels @ np.arange(10.0))

    res = minimize(fn, space, max_evaluations=60, seed=0, retries=1)
    nan_ones = [e for e in res.history if e.levels[0] == 1]
    assert all(e.error == "fitness returned NaN" for e in nan_ones)
    assert all(attempts[e.levels.tobytes()] == 1 for e in nan_ones)
    assert all(e.error is None for e in res.history if e.levels[0] == 0)
    assert res.n_failures == len(nan_ones)


def test_without_retries_an_exception_is_a_failure():
    space = LevelSpace(2, n_units=10, total=3)
    res = minimize(lambda lv: 1 / 0 if lv[0] else float(lv.sum()), space, max_evaluations=40, seed=0)
    assert res.n_failures > 0
    assert all(e.error.startswith("ZeroDivisionError") for e in res.history if e.levels[0] == 1)
    assert res.best_levels[0] == 0


def test_an_oracle_that_always_fails_stops_after_max_consecutive_failures():
    space = LevelSpace(2, n_units=16, total=4)
    calls = []

    def broken(levels):
        calls.append(1)
        raise FileNotFoundError("weights.safetensors")

    with pytest.raises(AllFailedError, match=r"evaluations in a row failed .*FileNotFoundError: weights"):
        minimize(broken, space, options={"offspring": 8}, max_evaluations=10_000, seed=0, max_consecutive_failures=20)
    assert 20 <= len(calls) < 20 + 9  # stops at the end of the batch that reached 20


def test_a_run_stopped_by_failures_resumes_once_the_oracle_is_fixed(tmp_path):
    space = LevelSpace(2, n_units=16, total=4)
    fixed = [False]

    def oracle(levels):
        if not fixed[0]:
            raise OSError("disk full")
        return float(levels @ np.arange(16.0))

    kw = {"options": {"offspring": 8}, "max_evaluations": 200, "seed": 0, "max_consecutive_failures": 10}
    with pytest.raises(AllFailedError):
        minimize(oracle, space, journal=tmp_path / "j.db", **kw)
    fixed[0] = True
    res = minimize(oracle, space, journal=tmp_path / "j.db", **kw)
    assert res.stopped_by == "max_evaluations" and res.best_value < math.inf
    assert res.n_failures > 0 and res.n_replayed == res.n_failures


def test_a_batch_oracle_returning_nan_fails_only_those_candidates():
    space = LevelSpace(2, n_units=10, total=3)

    class Batched(Problem):
        def evaluate(self, levels, fidelity=None, sample=None):
            raise AssertionError("evaluate_many is used for batches")

        def evaluate_many(self, requests):
            return [float("nan") if r.levels[0] else float(r.levels @ np.arange(10.0)) for r in requests]

    ev = SerialEvaluator(Batched(space))
    res = minimize(Batched(space), evaluator=ev, options={"offspring": 6}, max_evaluations=60, seed=0)
    assert res.n_failures > 0 and res.best_levels[0] == 0
    assert all(e.error is not None for e in res.history if e.levels[0] == 1)


def test_levelsearch_run_takes_retries_and_max_consecutive_failures_from_the_config(tmp_path, capsys):
    cfg = tmp_path / "flaky.yaml"
    cfg.write_text(
        "problem: {kind: flaky-linear, fail_percent: 100, n_units: 24, total: 6}\n"
        "optimizer: {name: evopress, offspring: 4, init_candidates: 4}\n"
        "budget: {max_evaluations: 500}\n"
        "evaluator: {kind: serial, retries: 2}\n"
        "max_consecutive_failures: 7\n"
    )
    FlakyLinear.calls_by_assignment.clear()
    assert main(["run", str(cfg), "--out", str(tmp_path / "run"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("levelsearch: error: ") and "in a row failed" in err[0]
    assert err[0].endswith(f"fix it, then: levelsearch resume {tmp_path / 'run'}")
    with Journal(tmp_path / "run" / "journal.db", readonly=True) as jr:
        recs = list(jr.records())
        assert jr.meta("config")["evaluator"] == {"kind": "serial", "retries": 2}
    assert 7 <= len(recs) < 7 + 5 and not any(r.ok for r in recs)
    calls = FlakyLinear.calls_by_assignment
    for r in recs:  # exceptions were tried 1 + 2 times, NaN once
        assert calls[r.levels.tobytes()] == (3 if r.error.startswith("RuntimeError") else 1)


def test_levelsearch_run_with_a_flaky_oracle_writes_a_summary_without_failed_best(tmp_path, capsys):
    cfg = tmp_path / "flaky.yaml"
    cfg.write_text(
        "problem: {kind: flaky-linear, n_units: 24, total: 6}\n"
        "optimizer: {name: evopress, offspring: 8}\n"
        "budget: {max_evaluations: 300}\n"
        "evaluator: {kind: serial, retries: 1}\n"
    )
    assert main(["run", str(cfg), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["n_failures"] > 0 and math.isfinite(summary["best_value"])
    assert _bucket(np.array(summary["best_levels"])) >= 10


def test_a_run_whose_every_evaluation_failed_reports_no_best_value(tmp_path, capsys):
    cfg = tmp_path / "broken.yaml"
    cfg.write_text(
        "problem: {kind: flaky-linear, fail_percent: 100, n_units: 24, total: 6}\n"
        "budget: {max_evaluations: 20}\nmax_consecutive_failures: 1000\n"
    )
    assert main(["run", str(cfg), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())  # strict JSON: no Infinity
    assert summary["best_value"] is None and summary["n_failures"] == 20
    assert "none (no evaluation succeeded)" in capsys.readouterr().out
