"""Trust nothing on disk that was not checked: the test table.

Every case ends in a rebuild or a one-line error, and none in a changed result:

| case                                   | tests                                                     |
|----------------------------------------|-----------------------------------------------------------|
| mutating fitness                       | test_a_fitness_that_writes_into_its_levels_*              |
| str / bool / Decimal fitness values    | test_a_fitness_value_that_is_not_a_real_number_*          |
| NaN / inf / huge budgets, NaN settings | test_non_finite_or_absurd_budgets_*, CLI_CASES            |
| journal of another problem / oracle    | test_a_journal_of_another_oracle_*                        |
| 0-byte / header-less journal           | test_an_empty_journal_*, CLI_CASES                        |
| two runs racing for one directory      | test_a_run_directory_is_locked_*, test_two_runs_racing_*  |
| binary config, malformed bench YAML    | CLI_CASES, test_malformed_bench_yaml_*                    |
| corrupt teacher, edited heuristics,    |                                                           |
| corrupted database file and manifest,  | tests/test_integrity_llm.py (tiny model, marked llm)      |
| changed data file at the same path,    |                                                           |
| truncated safetensors, --out a file    |                                                           |
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from levelsearch import Journal, JournalMismatch, LevelSpace, minimize
from levelsearch.cli import main
from levelsearch.driver import oracle_fingerprint
from levelsearch.evaluators import FitnessTypeError
from levelsearch.problem import FunctionProblem

ERRS = np.random.default_rng(0).random((32, 2)) * [0.0, 1.0]
SPACE = LevelSpace(2, n_units=32, total=8)


def _value(lv: np.ndarray) -> float:
    return float(ERRS[np.arange(32), lv].sum())


# ------------------------------------------------------------------ mutating fitness
@pytest.mark.parametrize("name", ["evopress", "random", "dp", "greedy"])
def test_a_fitness_that_writes_into_its_levels_corrupts_nothing(tmp_path, name):
    def mutating(lv):
        v = float(ERRS[np.arange(32), lv].sum())
        lv[:] = 0  # a fitness that zeroes its input: best_levels would sum to 0 (infeasible) with another's value
        return v

    res = minimize(mutating, SPACE, name, max_evaluations=200, seed=0, journal=tmp_path / "j.db")
    clean = minimize(_value, SPACE, name, max_evaluations=200, seed=0)
    with Journal(tmp_path / "j.db", readonly=True) as jr:
        recs = list(jr.records())
    assert recs and all(int(r.levels.sum()) == 8 and r.value == _value(r.levels) for r in recs)
    assert res.best_value == clean.best_value and res.best_levels.tolist() == clean.best_levels.tolist()
    assert SPACE.is_feasible(res.best_levels) and all(int(e.levels.sum()) == 8 for e in res.history)


@pytest.mark.parametrize("name", ["evopress", "random", "dp", "greedy"])
def test_a_fitness_that_copies_before_writing_gets_the_same_result_as_a_clean_one(name):
    def copying(lv):
        lv = lv.copy()
        v = _value(lv)
        lv[:] = 0
        return v

    clean = minimize(_value, SPACE, name, max_evaluations=200, seed=0)
    got = minimize(copying, SPACE, name, max_evaluations=200, seed=0)
    assert got.best_levels.tolist() == clean.best_levels.tolist() and got.best_value == clean.best_value
    assert int(got.best_levels.sum()) == 8 and got.best_value == pytest.approx(_value(got.best_levels))
    assert all(int(e.levels.sum()) == 8 and e.value == pytest.approx(_value(e.levels)) for e in got.history)


# ------------------------------------------------------------------ fitness value types
@pytest.mark.parametrize("bad", ["0.5", True, Decimal("0.5"), None, [0.5], np.array([0.5, 1.0]), np.bool_(False)])
def test_a_fitness_value_that_is_not_a_real_number_stops_the_run_at_once(tmp_path, bad):
    calls = []

    def fn(lv):
        calls.append(1)
        return bad

    with pytest.raises(FitnessTypeError, match="not a real number|bool") as info:
        minimize(fn, SPACE, max_evaluations=50, seed=0, journal=tmp_path / "j.db")
    assert len(calls) == 1 and "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)  # the CLI's one line and exit 2
    with Journal(tmp_path / "j.db", readonly=True) as jr:
        assert len(jr) == 0  # nothing coerced into the journal


@pytest.mark.parametrize("good", [0.5, 1, np.float32(0.5), np.int64(2), np.array(0.25)])
def test_real_number_fitness_values_are_accepted(good):
    res = minimize(lambda lv: good, SPACE, max_evaluations=20, seed=0)
    assert res.n_failures == 0 and res.best_value == float(good)


def test_a_problem_whose_batch_oracle_returns_strings_is_refused():
    class Strings(FunctionProblem):
        def evaluate_many(self, requests):
            return ["1.0" for _ in requests]

    with pytest.raises(FitnessTypeError, match="str"):
        minimize(Strings(_value, SPACE), max_evaluations=50, seed=0)


# ------------------------------------------------------------------ budgets
@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"max_cost": math.nan}, "max_cost"),
        ({"max_cost": math.inf}, "max_cost"),
        ({"max_cost": 1e300}, "max_cost"),
        ({"max_evaluations": 10**23}, "max_evaluations"),
        ({"max_evaluations": 100, "options": {"offspring": 8, "max_switches": math.nan}}, "finite"),
        ({"max_evaluations": 100, "target": math.nan}, "target"),
    ],
)
def test_non_finite_or_absurd_budgets_are_refused_before_the_journal_is_written(tmp_path, kw, words):
    with pytest.raises(ValueError, match=words):
        minimize(_value, SPACE, seed=0, journal=tmp_path / "j.db", **kw)
    assert not (tmp_path / "j.db").exists()


# ------------------------------------------------------------------ journals bound to their oracle
def _write_journal(path: Path, fn) -> float:
    return minimize(fn, SPACE, max_evaluations=60, seed=0, journal=path).best_value


def test_a_journal_of_another_oracle_with_the_same_name_is_refused(tmp_path):
    other = np.random.default_rng(1).random((32, 2)) * [0.0, 1.0]
    f1 = lambda lv: float(ERRS[np.arange(32), lv].sum())  # noqa: E731 - both are "<lambda>"
    f2 = lambda lv: float(other[np.arange(32), lv].sum())  # noqa: E731
    _write_journal(tmp_path / "j.db", f1)
    with pytest.raises(JournalMismatch, match="another oracle"):
        minimize(f2, SPACE, max_evaluations=60, seed=0, journal=tmp_path / "j.db")
    fresh = minimize(f2, SPACE, max_evaluations=60, seed=0)
    assert fresh.best_value != _write_journal(tmp_path / "k.db", f1)  # f1's values would have been reported


def test_a_journal_of_the_same_code_on_other_data_is_refused(tmp_path):
    def make(errs):
        def f(lv):
            return float(errs[np.arange(32), lv].sum())

        return f

    _write_journal(tmp_path / "j.db", make(ERRS))
    with pytest.raises(JournalMismatch, match="another oracle"):
        minimize(make(ERRS * 2), SPACE, max_evaluations=60, seed=0, journal=tmp_path / "j.db")
    assert oracle_fingerprint(FunctionProblem(make(ERRS), SPACE)) == oracle_fingerprint(
        FunctionProblem(make(ERRS.copy()), SPACE)
    )


def test_resume_true_replays_a_journal_of_a_changed_oracle_on_purpose(tmp_path):
    def f(lv):
        return _value(lv)

    def g(lv):
        """Same values, a docstring more: only the caller knows that."""
        return _value(lv)

    g.__qualname__ = f.__qualname__  # same name: the problem description matches, the code does not

    first = minimize(f, SPACE, max_evaluations=60, seed=0, journal=tmp_path / "j.db")
    with pytest.raises(JournalMismatch, match="resume=True"):
        minimize(g, SPACE, max_evaluations=60, seed=0, journal=tmp_path / "j.db")
    again = minimize(g, SPACE, max_evaluations=60, seed=0, journal=tmp_path / "j.db", resume=True)
    assert again.n_replayed == 60 and again.best_value == first.best_value
    # the journal is now bound to g: resuming with it needs no flag
    assert minimize(g, SPACE, max_evaluations=60, seed=0, journal=tmp_path / "j.db").n_replayed == 60


def test_a_closure_counter_does_not_change_the_oracle(tmp_path):
    calls = []

    def f(lv):
        calls.append(1)
        return _value(lv)

    minimize(f, SPACE, max_evaluations=40, seed=0, journal=tmp_path / "j.db")
    assert minimize(f, SPACE, max_evaluations=40, seed=0, journal=tmp_path / "j.db").n_replayed == 40


# ------------------------------------------------------------------ empty journals
@pytest.mark.parametrize("content", [b"", b"SQLite format 3\x00" + bytes(84)])
def test_an_empty_journal_is_refused_and_left_untouched(tmp_path, content):
    (tmp_path / "j.db").write_bytes(content)
    with pytest.raises(ValueError, match="not a levelsearch journal|holds no levelsearch journal|not a readable"):
        minimize(_value, SPACE, max_evaluations=20, seed=0, journal=tmp_path / "j.db")
    assert (tmp_path / "j.db").read_bytes() == content


# ------------------------------------------------------------------ the command line
GOOD = {
    "problem": "{kind: linear, n_units: 24, n_levels: 2, total: 6, seed: 0}",
    "optimizer": "{name: evopress, offspring: 8}",
    "seed": "0",
    "budget": "{max_evaluations: 100}",
}


def _yaml(**changes: str) -> str:
    return "".join(f"{k}: {v}\n" for k, v in {**GOOD, **changes}.items())


def _empty_journal(run: Path) -> None:
    (run / "config.yaml").write_text(_yaml())  # a run directory of this config, whose journal is empty
    (run / "journal.db").write_bytes(b"")


CLI_CASES = [
    ("max-cost-nan", _yaml(budget="{max_cost: .nan}"), None, "max_cost"),
    ("max-cost-inf", _yaml(budget="{max_cost: .inf}"), None, "max_cost"),
    ("max-evaluations-1e23-int", _yaml(budget="{max_evaluations: 100000000000000000000000}"), None, "1..1000000000"),
    ("max-evaluations-1e23", _yaml(budget="{max_evaluations: 1e23}"), None, "max_evaluations"),
    (
        "sigma-nan",
        _yaml(problem="{kind: noisy, base: {kind: linear, n_units: 8, total: 2}, sigma: .nan}"),
        None,
        "problem.sigma: must be a finite number",
    ),
    ("option-inf", _yaml(optimizer="{name: evopress, max_switches: .inf}"), None, "max_switches: must be an integer"),
    ("zero-byte-journal", _yaml(), _empty_journal, "empty (0 bytes)"),
]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("levelsearch: error: ")
    return lines[0]


@pytest.mark.parametrize(("text", "setup", "words"), [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_bad_settings_exit_2_with_one_line_before_anything_is_written(tmp_path, capsys, text, setup, words):
    (tmp_path / "run.yaml").write_text(text)
    run = tmp_path / "run"
    run.mkdir()
    if setup is not None:
        setup(run)
    before = _snapshot(run)
    assert main(["run", str(tmp_path / "run.yaml"), "--out", str(run), "--quiet"]) == 2
    assert words in _one_error_line(capsys)
    assert _snapshot(run) == before


def test_resume_of_a_zero_byte_journal_exits_2_and_keeps_it(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(_yaml())
    _empty_journal(run)
    assert main(["resume", str(run), "--quiet"]) == 2
    assert "empty (0 bytes)" in _one_error_line(capsys)
    assert _snapshot(run) == {"config.yaml": _yaml().encode(), "journal.db": b""}


def test_a_binary_config_is_one_line_naming_the_file(tmp_path, capsys):
    cfg = tmp_path / "model.bin"
    cfg.write_bytes(bytes(range(256)) * 4)
    assert main(["run", str(cfg), "--out", str(tmp_path / "run")]) == 2
    line = _one_error_line(capsys)
    assert str(cfg) in line and "not a UTF-8 text file" in line
    assert not (tmp_path / "run").exists()


def test_malformed_bench_yaml_is_one_line_exit_2(tmp_path, capsys):
    cfg = tmp_path / "bench.yaml"
    cfg.write_text("optimizers: [evopress\nproblems: {kind: linear\n")
    assert main(["bench", str(cfg), "--out", str(tmp_path / "b")]) == 2
    line = _one_error_line(capsys)
    assert str(cfg) in line and "not valid YAML" in line


def test_a_run_directory_is_locked_before_config_yaml_is_written(tmp_path, capsys):
    (tmp_path / "run.yaml").write_text(_yaml())
    run = tmp_path / "run"
    run.mkdir()
    fd = os.open(run, os.O_RDONLY)  # another process holding the directory
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main(["run", str(tmp_path / "run.yaml"), "--out", str(run), "--quiet"]) == 2
        assert "in use by another levelsearch process" in _one_error_line(capsys)
        assert list(run.iterdir()) == []  # no config.yaml, no journal
    finally:
        os.close(fd)
    assert main(["run", str(tmp_path / "run.yaml"), "--out", str(run), "--quiet"]) == 0


def test_two_runs_racing_for_one_directory_leave_a_config_that_matches_what_ran(tmp_path):
    """Started together with different configs: one runs, the other is refused, config.yaml tells the truth."""
    run = tmp_path / "run"
    texts = [_yaml(seed="1", budget="{max_evaluations: 3000}"), _yaml(seed="2", budget="{max_evaluations: 3000}")]
    procs = []
    for k, text in enumerate(texts):
        (tmp_path / f"{k}.yaml").write_text(text)
        cfg = str(tmp_path / f"{k}.yaml")
        cmd = [sys.executable, "-m", "levelsearch.cli", "run", cfg, "--out", str(run), "--quiet"]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [(p.wait(timeout=120), p.stderr.read() if p.stderr else "") for p in procs]
    codes = sorted(rc for rc, _ in outs)
    assert codes == [0, 2], outs
    loser = next(err for rc, err in outs if rc == 2)
    assert loser.count("\n") == 1 and ("in use" in loser or "different config" in loser)
    winner = next(k for k, (rc, _) in enumerate(outs) if rc == 0)
    assert (run / "config.yaml").read_text().startswith("problem:")
    assert f"seed: {winner + 1}" in (run / "config.yaml").read_text()
    with Journal(run / "journal.db", readonly=True) as jr:
        assert jr.meta("identity")["seed"] == winner + 1 and jr.meta("config")["seed"] == winner + 1
    assert json.loads((run / "summary.json").read_text())["seed"] == winner + 1
