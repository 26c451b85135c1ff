"""Resume is replay: a run killed any number of times ends exactly like an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from levelsearch import make_problem, minimize

# A CLI whose problem registry also knows "sleepy-noisy": the noisy synthetic problem
# plus a fixed sleep per evaluation, so that kills land in the middle of a run. With
# LEVELSEARCH_TEST_HOLD=N:FILE the N-th evaluation of the process creates FILE and then
# waits (up to 60 s), so that a test can signal it mid-run however loaded the machine is.
CLI = """
import os, sys, time
from levelsearch import register_problem, make_problem
from levelsearch.problem import Problem
from levelsearch.cli import main


class Sleepy(Problem):
    name = "sleepy-noisy"
    uses_fidelity = True

    def __init__(self, sleep=0.01, **base):
        self.inner = make_problem({"kind": "noisy", **base})
        super().__init__(self.inner.space)
        self.max_fidelity = self.inner.max_fidelity
        self.sleep = sleep
        self.params = {"sleep": sleep, **base}
        self.calls = 0

    def evaluate(self, levels, fidelity=None, sample=None):
        time.sleep(self.sleep)
        self.calls += 1
        hold = os.environ.get("LEVELSEARCH_TEST_HOLD")
        if hold and self.calls == int(hold.split(":", 1)[0]):
            open(hold.split(":", 1)[1], "w").close()
            time.sleep(60)  # a signal interrupts the sleep
        return self.inner.evaluate(levels, fidelity, sample)

    def true_value(self, levels):
        return self.inner.true_value(levels)

    def describe(self):
        return {"name": self.name, **self.params}


register_problem("sleepy-noisy", Sleepy)
sys.exit(main(sys.argv[1:]))
"""

CONFIG = """
problem:
  kind: sleepy-noisy
  sleep: 0.008
  base: {kind: linear, n_units: 24, n_levels: 2, total: 6, seed: 0}
  sigma: 3.0
  max_fidelity: 4096
optimizer: {name: evopress, offspring: 8, steps: [[256, 3], [null, 1]]}
seed: 11
budget: {max_evaluations: 420}
"""


@pytest.fixture()
def cli(tmp_path: Path) -> list[str]:
    script = tmp_path / "cli.py"
    script.write_text(CLI)
    (tmp_path / "run.yaml").write_text(CONFIG)
    return [sys.executable, str(script)]


def _journal_keys(run: Path) -> list[tuple[bytes, int | None, int | None]]:
    con = sqlite3.connect(f"file:{run / 'journal.db'}?mode=ro", uri=True)
    try:
        return con.execute("SELECT levels, fidelity, sample FROM evals ORDER BY id").fetchall()
    finally:
        con.close()


def _count(run: Path) -> int:
    try:
        return len(_journal_keys(run))
    except sqlite3.Error:  # not created yet
        return 0


def _comparable(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in ("wall_seconds", "n_replayed")}


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_equals_an_uninterrupted_run(cli, tmp_path):
    straight = tmp_path / "straight"
    done = subprocess.run([*cli, "run", str(tmp_path / "run.yaml"), "--out", str(straight), "--quiet"], timeout=60)
    assert done.returncode == 0
    expected = json.loads((straight / "summary.json").read_text())

    run = tmp_path / "killed"
    rng = np.random.default_rng(2024)
    kills, counts = 0, []
    cmd = [*cli, "run", str(tmp_path / "run.yaml"), "--out", str(run), "--quiet"]
    while True:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        start = _count(run)
        # kill after a random number of new journaled evaluations (1..40), i.e. at a random point mid-run
        wait_for = start + int(rng.integers(1, 41))
        deadline = time.monotonic() + 20
        while proc.poll() is None and _count(run) < wait_for and time.monotonic() < deadline:
            time.sleep(0.002)
        if proc.poll() is not None or kills >= 6:
            proc.wait(timeout=60)
            err = proc.stderr.read().decode() if proc.stderr else ""
            assert proc.returncode == 0, err
            break
        time.sleep(float(rng.uniform(0, 0.02)))  # land between and inside evaluations
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        kills += 1
        counts.append(_count(run))
        cmd = [*cli, "resume", str(run), "--quiet"]

    assert kills >= 5, f"the run ended after {kills} kills; make it longer"
    assert counts == sorted(counts) and counts[-1] < expected["n_evaluations"]
    got = json.loads((run / "summary.json").read_text())
    assert _comparable(got) == _comparable(expected)
    assert got["n_replayed"] == counts[-1]
    keys = _journal_keys(run)
    assert len(keys) == len(set(keys)) == expected["n_evaluations"], "an evaluation was run twice"
    assert keys == _journal_keys(straight)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_stops_cleanly_says_how_to_resume_and_resume_finishes(cli, tmp_path, sig):
    run = tmp_path / "run"
    held = tmp_path / "held"
    proc = subprocess.Popen(
        [*cli, "run", str(tmp_path / "run.yaml"), "--out", str(run), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "LEVELSEARCH_TEST_HOLD": f"31:{held}"},
        # as from a terminal: a test run started in the background inherits SIGINT ignored, and Python keeps it so
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    # the 31st evaluation waits for the signal: the run is interrupted mid-run on any machine
    deadline = time.monotonic() + 60
    while not held.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert held.exists(), "the run never reached its 31st evaluation"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert f"resume with: levelsearch resume {run}" in err.decode()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped_by"] == "interrupted" and summary["n_evaluations"] < 420

    resumed = subprocess.run([*cli, "resume", str(run), "--quiet"], capture_output=True, timeout=60)
    assert resumed.returncode == 0, resumed.stderr.decode()
    final = json.loads((run / "summary.json").read_text())
    assert final["stopped_by"] == "max_evaluations" and final["n_evaluations"] == 420
    assert final["n_replayed"] >= summary["n_evaluations"]
    keys = _journal_keys(run)
    assert len(keys) == len(set(keys)) == 420


def test_interrupted_in_the_middle_of_a_batch_then_resumed_equals_uninterrupted(tmp_path):
    problem = make_problem({"kind": "noisy", "base": {"kind": "linear", "n_units": 20, "total": 5}, "sigma": 2.0})
    opts = {"offspring": 8, "steps": [[512, 3], [None, 1]]}
    straight = minimize(problem, options=opts, seed=5, max_evaluations=200)
    calls = []
    interrupt_at = [77]  # the 77th call: in the middle of a batch

    def fn(levels, fidelity, sample):
        calls.append(1)
        if len(calls) == interrupt_at[0]:
            raise KeyboardInterrupt
        return problem.evaluate(levels, fidelity, sample)

    stopped = minimize(fn, problem.space, options=opts, seed=5, max_evaluations=200, journal=tmp_path / "j.db")
    assert stopped.stopped_by == "interrupted" and stopped.n_evaluations == 76
    calls.clear()
    interrupt_at[0] = -1
    resumed = minimize(fn, problem.space, options=opts, seed=5, max_evaluations=200, journal=tmp_path / "j.db")
    assert resumed.n_replayed == 76 and resumed.n_spot_checks == 3 and len(calls) == 200 - 76 + 3
    assert resumed.best_levels.tolist() == straight.best_levels.tolist()
    assert resumed.best_value == straight.best_value
    assert [e.value for e in resumed.history] == [e.value for e in straight.history]
    assert os.path.getsize(tmp_path / "j.db") > 0


def test_running_again_with_a_larger_budget_continues_the_run(tmp_path):
    from levelsearch.cli import main

    text = (
        "problem: {kind: linear, n_units: 24, n_levels: 2, total: 6, seed: 0}\n"
        "optimizer: {name: evopress, offspring: 8}\nseed: 3\nbudget: {max_evaluations: %d}\n"
    )
    for name, budget in (("short", 100), ("long", 250)):
        (tmp_path / f"{name}.yaml").write_text(text % budget)
    assert main(["run", str(tmp_path / "long.yaml"), "--out", str(tmp_path / "straight"), "--quiet"]) == 0
    assert main(["run", str(tmp_path / "short.yaml"), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert main(["run", str(tmp_path / "long.yaml"), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    got = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert got["n_replayed"] == 100 and got["n_evaluations"] == 250
    assert _comparable(got) == _comparable(json.loads((tmp_path / "straight" / "summary.json").read_text()))
    assert "max_evaluations: 250" in (tmp_path / "run" / "config.yaml").read_text()  # `resume` goes on from here


@pytest.mark.parametrize(
    "name", ["evopress", "evopress-ref", "random", "nevergrad-discreteoneplusone", "optuna-random"]
)
def test_resume_is_exact_for_registered_optimizers(tmp_path, name):
    from levelsearch import available_optimizers
    from levelsearch.problem import FunctionProblem

    if name not in available_optimizers():
        pytest.skip(f"{name} is not installed")
    problem = make_problem({"kind": "noisy", "base": {"kind": "linear", "n_units": 16, "total": 4}, "sigma": 2.0})
    straight = minimize(problem, optimizer=name, seed=1, max_evaluations=80)
    calls, interrupt_at = [0], [37]

    def fn(levels, fidelity, sample):
        calls[0] += 1
        if calls[0] == interrupt_at[0]:
            raise KeyboardInterrupt
        return problem.evaluate(levels, fidelity, sample)

    oracle = FunctionProblem(fn, problem.space, max_fidelity=problem.max_fidelity, name="noisy")
    first = minimize(oracle, optimizer=name, seed=1, max_evaluations=80, journal=tmp_path / "j.db")
    assert first.stopped_by == "interrupted" and first.n_evaluations == 36
    interrupt_at[0] = -1
    resumed = minimize(oracle, optimizer=name, seed=1, max_evaluations=80, journal=tmp_path / "j.db")
    # the interrupted call is run again, nothing journaled is (but the spot-checks)
    assert calls[0] == 37 + 80 - 36 + resumed.n_spot_checks and resumed.n_spot_checks == 3
    assert [(e.levels.tolist(), e.fidelity, e.sample, e.value) for e in resumed.history] == [
        (e.levels.tolist(), e.fidelity, e.sample, e.value) for e in straight.history
    ]
    assert resumed.best_levels.tolist() == straight.best_levels.tolist()


def test_resume_accepts_the_run_directory_or_its_journal(tmp_path):
    from levelsearch.cli import main

    (tmp_path / "run.yaml").write_text(
        "problem: {kind: linear, n_units: 16, total: 4}\nbudget: {max_evaluations: 40}\n"
    )
    assert main(["run", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert main(["resume", str(tmp_path / "run" / "journal.db"), "--quiet"]) == 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["n_replayed"] == 40
