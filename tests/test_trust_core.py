"""No silent wrong result in the core: a journal that checks itself, resume that re-measures, levels the
optimizer owns, budget bands at the lowest assignment, and inputs refused with one line."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from levelsearch import FunctionProblem, Journal, JournalMismatch, LevelSpace, make_problem, minimize
from levelsearch.report import load_report

LINEAR = {"kind": "linear", "n_units": 16, "n_levels": 2, "total": 4, "seed": 0}


def _journal(path: Path, n: int = 5) -> None:
    with Journal(path, {"seed": 1}) as jr:
        for k in range(n):
            jr.append(np.array([k % 2, 1 - k % 2, 1]), None, None, float(k) + 0.5, None, 0.01, "local")
        jr.set_meta("result:dp", {"levels": [0, 1, 1], "value": 1.5})


def _sql(path: Path, statement: str, *args: object) -> None:
    con = sqlite3.connect(path)
    with con:
        con.execute(statement, args)
    con.close()


def _read_all(path: Path) -> None:
    with Journal(path, readonly=True) as jr:
        list(jr.records())
        jr.meta("result:dp")


# ------------------------------------------------------------------ the journal's chain
def test_an_untouched_journal_reads_back_and_keeps_its_meta(tmp_path):
    _journal(tmp_path / "j.db")
    with Journal(tmp_path / "j.db", {"seed": 1}) as jr:
        assert [r.value for r in jr.records()] == [0.5, 1.5, 2.5, 3.5, 4.5]
        assert jr.meta("result:dp") == {"levels": [0, 1, 1], "value": 1.5}
        jr.append(np.array([1, 1, 1]), None, None, 9.0, None, 0.0, "local")  # appending goes on after a reopen
        jr.set_meta("result:dp", {"levels": [1, 1, 0], "value": 0.5})
    with Journal(tmp_path / "j.db", readonly=True) as jr:
        assert len(list(jr.records())) == 6 and jr.meta("result:dp")["value"] == 0.5


@pytest.mark.parametrize(
    "edit",
    [
        "UPDATE evals SET value = value / 2 WHERE id = 3",
        "UPDATE evals SET levels = (SELECT levels FROM evals WHERE id = 1) WHERE id = 2",
        "UPDATE evals SET error = 'boom', value = NULL WHERE id = 2",
        "UPDATE evals SET fidelity = 64 WHERE id = 4",
        "DELETE FROM evals WHERE id = 2",
        "UPDATE evals SET id = 9 WHERE id = 1",
        "INSERT INTO evals SELECT 6, levels, fidelity, sample, 0.0, error, seconds, worker, time, chain "
        "FROM evals WHERE id = 1",
    ],
    ids=["halved-value", "other-levels", "value-to-failure", "fidelity", "deleted", "reordered", "inserted"],
)
def test_an_edited_evaluation_row_is_refused_naming_the_row(tmp_path, edit):
    _journal(tmp_path / "j.db")
    _sql(tmp_path / "j.db", edit)
    with pytest.raises(ValueError, match=r"^journal .*j\.db was altered at row \d+ .*start a new run$"):
        _read_all(tmp_path / "j.db")


@pytest.mark.parametrize("key", ["identity", "result:dp", "created", "levelsearch_version", "genesis"])
def test_an_edited_meta_value_is_refused_naming_the_key(tmp_path, key):
    _journal(tmp_path / "j.db")
    con = sqlite3.connect(tmp_path / "j.db")
    (text,) = con.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
    value = json.loads(text)
    if isinstance(value, dict):
        value = {**value, "seed" if "seed" in value else "value": 2}
    elif isinstance(value, str):
        value = value + "-edited"
    else:
        value = value + 1
    with con:
        con.execute("UPDATE meta SET value=? WHERE key=?", (json.dumps(value), key))
    con.close()
    with pytest.raises(ValueError, match=rf"altered at meta value '{key}'"):
        _read_all(tmp_path / "j.db")


def test_a_meta_value_copied_from_another_journal_is_refused(tmp_path):
    _journal(tmp_path / "a.db")
    with Journal(tmp_path / "b.db", {"seed": 1}) as jr:
        jr.set_meta("result:dp", {"levels": [1, 1, 1], "value": 0.1})
    con = sqlite3.connect(tmp_path / "b.db")
    row = con.execute("SELECT value, at, checksum FROM meta WHERE key='result:dp'").fetchone()
    con.close()
    _sql(tmp_path / "a.db", "UPDATE meta SET value=?, at=?, checksum=? WHERE key='result:dp'", *row)
    with pytest.raises(ValueError, match="altered at meta value 'result:dp'"):
        _read_all(tmp_path / "a.db")


def test_a_meta_value_that_cites_deleted_rows_is_refused(tmp_path):
    """Rows deleted from the end go unnoticed alone (a run killed earlier), but not under a later meta value."""
    _journal(tmp_path / "j.db")
    _sql(tmp_path / "j.db", "DELETE FROM evals WHERE id = 5")
    with pytest.raises(ValueError, match="altered at meta value 'result:dp'"):
        _read_all(tmp_path / "j.db")


def _old_journal(path: Path) -> None:
    """A journal as levelsearch wrote it before rows had a chain (schema 1)."""
    con = sqlite3.connect(path)
    with con:
        con.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        con.execute(
            "CREATE TABLE evals (id INTEGER PRIMARY KEY, levels BLOB NOT NULL, fidelity INTEGER, "
            "sample INTEGER, value REAL, error TEXT, seconds REAL, worker TEXT, time REAL)"
        )
        con.executemany(
            "INSERT INTO meta VALUES (?, ?)",
            [("format", '["levelsearch-journal", 1]'), ("identity", '{"seed": 1}'), ("created", "1.0")],
        )
        con.execute(
            "INSERT INTO evals (levels, value, seconds, worker, time) VALUES (?, 2.5, 0.1, 'local', 1.0)",
            (np.array([0, 1, 1]).tobytes(),),
        )
    con.close()


def test_a_journal_without_integrity_record_is_refused_for_resume_and_read_with_a_warning(tmp_path):
    _old_journal(tmp_path / "j.db")
    before = (tmp_path / "j.db").read_bytes()
    with pytest.raises(ValueError, match=r"older levelsearch and has no integrity record.*run it again") as info:
        Journal(tmp_path / "j.db", {"seed": 1})
    assert "\n" not in str(info.value) and (tmp_path / "j.db").read_bytes() == before
    warned = pytest.warns(UserWarning, match="no integrity record: its values are read unchecked")
    with warned, Journal(tmp_path / "j.db", readonly=True) as jr:
        assert [r.value for r in jr.records()] == [2.5] and jr.meta("identity") == {"seed": 1}


def test_a_journal_whose_format_was_set_back_is_refused(tmp_path):
    _journal(tmp_path / "j.db")
    _sql(tmp_path / "j.db", "UPDATE meta SET value='[\"levelsearch-journal\", 1]' WHERE key='format'")
    with pytest.raises(ValueError, match="altered at meta value 'format'"):
        Journal(tmp_path / "j.db", readonly=True)


def test_resume_and_report_refuse_a_halved_value(tmp_path):
    problem = make_problem(LINEAR)
    minimize(problem, max_evaluations=40, seed=3, journal=tmp_path / "journal.db")
    _sql(tmp_path / "journal.db", "UPDATE evals SET value = value / 2 WHERE id = 17")
    with pytest.raises(ValueError, match="was altered at row 17"):
        minimize(problem, max_evaluations=60, seed=3, journal=tmp_path / "journal.db")
    with pytest.raises(ValueError, match="was altered at row 17"):
        load_report(tmp_path)


def test_resume_refuses_an_edited_identity(tmp_path):
    problem = make_problem(LINEAR)
    minimize(problem, max_evaluations=20, seed=3, journal=tmp_path / "journal.db")
    _sql(
        tmp_path / "journal.db",
        "UPDATE meta SET value = replace(value, '\"seed\": 3', '\"seed\": 4') WHERE key='identity'",
    )
    with pytest.raises(ValueError, match="altered at meta value 'identity'"):
        minimize(problem, max_evaluations=20, seed=4, journal=tmp_path / "journal.db")


# ------------------------------------------------------------------ resume re-measures
SPACE = LevelSpace(3, n_units=8, total=8)


class _Weighted:
    def __init__(self, weights: list[float]) -> None:
        self.weights = np.array(weights)

    def __call__(self, levels: np.ndarray) -> float:
        return float(self.weights @ levels)

    def fitness(self, levels: np.ndarray) -> float:
        return float(self.weights @ levels)


def _oracles(tmp_path: Path):
    """Pairs of fitness functions that fingerprint alike but give other values: the second after a change."""
    weights = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0]

    def over_list():
        data = list(weights)
        return lambda lv: float(np.dot(data, lv)), lambda: data.__setitem__(0, 7.0)

    def over_dict():
        data = {"w": list(weights)}
        return lambda lv: float(np.dot(data["w"], lv)), lambda: data["w"].__setitem__(2, 0.5)

    def callable_object():
        obj = _Weighted(weights)
        return obj, lambda: obj.weights.__setitem__(1, 8.0)

    def bound_method():
        obj = _Weighted(weights)
        return obj.fitness, lambda: obj.weights.__setitem__(5, 0.0)

    def data_file():
        path = tmp_path / "weights.npy"
        np.save(path, np.array(weights))
        return lambda lv: float(np.load(path) @ lv), lambda: np.save(path, np.array(weights[::-1]))

    return {f.__name__: f for f in (over_list, over_dict, callable_object, bound_method, data_file)}


@pytest.mark.parametrize("kind", ["over_list", "over_dict", "callable_object", "bound_method", "data_file"])
def test_a_journal_of_an_oracle_whose_data_changed_is_refused(tmp_path, kind):
    fn, change = _oracles(tmp_path)[kind]()
    first = minimize(fn, SPACE, max_evaluations=40, seed=2, journal=tmp_path / "j.db")
    again = minimize(fn, SPACE, max_evaluations=60, seed=2, journal=tmp_path / "j.db")  # unchanged: replays
    assert again.n_replayed == 40 and again.n_spot_checks == 3 and again.history[39].value == first.history[39].value
    change()
    with pytest.raises(JournalMismatch, match=r"^journal .* was written by another oracle: its evaluation \d+ "):
        minimize(fn, SPACE, max_evaluations=80, seed=2, journal=tmp_path / "j.db")
    with pytest.raises(JournalMismatch, match="has value .* but gives .* now"):
        minimize(fn, SPACE, max_evaluations=80, seed=2, journal=tmp_path / "j.db", resume=True)


def test_a_resumed_run_reports_what_an_uninterrupted_one_does(tmp_path):
    problem = make_problem(LINEAR)
    straight = minimize(problem, max_evaluations=90, seed=1)
    minimize(problem, max_evaluations=50, seed=1, journal=tmp_path / "j.db")
    resumed = minimize(problem, max_evaluations=90, seed=1, journal=tmp_path / "j.db")
    assert (resumed.n_evaluations, resumed.cost, resumed.best_value) == (90, straight.cost, straight.best_value)
    assert resumed.trace == straight.trace and resumed.n_spot_checks == 3 and straight.n_spot_checks == 0


def test_a_noisy_oracle_is_spot_checked_within_its_declared_tolerance(tmp_path):
    noisy = make_problem({"kind": "noisy", "base": LINEAR, "sigma": 2.0, "max_fidelity": 4096})
    opts = {"offspring": 8, "steps": [[256, 2], [None, 1]]}
    minimize(noisy, options=opts, seed=4, max_evaluations=60, journal=tmp_path / "j.db")
    drift = {"scale": 1.004}

    def shifted(levels, fidelity, sample):
        return drift["scale"] * noisy.evaluate(levels, fidelity, sample)

    oracle = FunctionProblem(shifted, noisy.space, max_fidelity=4096, name="noisy")
    oracle.describe = noisy.describe  # type: ignore[method-assign]  # the same problem, another oracle object
    ok = minimize(oracle, options=opts, seed=4, max_evaluations=80, journal=tmp_path / "j.db", resume=True)
    assert ok.n_spot_checks == 3  # 0.4 % is inside the default 1e-2 for an oracle with fidelity
    drift["scale"] = 1.05
    with pytest.raises(JournalMismatch, match=r"relative tolerance 0\.01"):
        minimize(oracle, options=opts, seed=4, max_evaluations=80, journal=tmp_path / "j.db", resume=True)
    oracle.replay_tolerance = 0.1
    assert minimize(oracle, options=opts, seed=4, max_evaluations=80, journal=tmp_path / "j.db", resume=True)


# ------------------------------------------------------------------ the optimizer owns its levels
def _vandal(how: str):
    weights = np.arange(1.0, 9.0)

    def fn(levels: np.ndarray) -> float:
        value = float(weights @ levels)
        if how == "setflags":
            levels.setflags(write=True)
            levels[:] = 0
        elif how == "torch":
            torch = pytest.importorskip("torch")
            torch.from_numpy(levels).fill_(2)
        else:  # a view through the buffer
            np.frombuffer(levels, dtype=np.int64)[:] = 1 if levels.flags.writeable else 0
        return value

    return fn, weights


@pytest.mark.parametrize("how", ["setflags", "torch", "frombuffer"])
def test_a_fitness_that_writes_into_its_levels_reaches_nothing(tmp_path, how):
    fn, weights = _vandal(how)
    res = minimize(fn, SPACE, max_evaluations=60, seed=0, journal=tmp_path / "j.db")
    clean = minimize(lambda lv: float(weights @ lv), SPACE, max_evaluations=60, seed=0)
    assert SPACE.is_feasible(res.best_levels) and res.best_value == float(weights @ res.best_levels)
    assert [e.levels.tolist() for e in res.history] == [e.levels.tolist() for e in clean.history]
    assert all(SPACE.is_feasible(e.levels) and e.value == float(weights @ e.levels) for e in res.history)
    with Journal(tmp_path / "j.db", readonly=True) as jr:
        assert [r.levels.tolist() for r in jr.records()] == [e.levels.tolist() for e in res.history]


# ------------------------------------------------------------------ Ctrl-C and hangs
def test_ctrl_c_twice_from_the_fitness_ends_interrupted_with_an_intact_journal(tmp_path):
    problem = make_problem(LINEAR)
    straight = minimize(problem, max_evaluations=80, seed=6)
    calls = [0]

    def fn(levels):
        calls[0] += 1
        if calls[0] in (25, 26):  # the second Ctrl-C comes in the resume's first fresh evaluation
            raise KeyboardInterrupt
        return problem.evaluate(levels)

    first = minimize(fn, problem.space, max_evaluations=80, seed=6, journal=tmp_path / "j.db")
    assert first.stopped_by == "interrupted" and first.n_evaluations == 24
    second = minimize(fn, problem.space, max_evaluations=80, seed=6, journal=tmp_path / "j.db", spot_checks=0)
    assert second.stopped_by == "interrupted" and second.n_evaluations == 24
    resumed = minimize(fn, problem.space, max_evaluations=80, seed=6, journal=tmp_path / "j.db")
    assert resumed.stopped_by == "max_evaluations" and resumed.best_value == straight.best_value
    assert [(t.n_evaluations, t.value) for t in resumed.trace] == [(t.n_evaluations, t.value) for t in straight.trace]


def test_ctrl_c_inside_the_journal_write_and_again_while_closing_is_no_traceback(tmp_path, monkeypatch):
    import os
    import signal

    problem = make_problem(LINEAR)
    straight = minimize(problem, max_evaluations=60, seed=2)
    real_append, real_close, n = Journal.append, Journal.close, [0]

    def append(self, *args, **kwargs):
        n[0] += 1
        if n[0] == 30:
            raise KeyboardInterrupt  # before the row is written
        real_append(self, *args, **kwargs)

    def close(self):
        os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C of the burst, while the journal closes
        real_close(self)

    monkeypatch.setattr(Journal, "append", append)
    monkeypatch.setattr(Journal, "close", close)
    stopped = minimize(problem, max_evaluations=60, seed=2, journal=tmp_path / "j.db")
    monkeypatch.undo()
    assert stopped.stopped_by == "interrupted" and stopped.n_evaluations == 29
    resumed = minimize(problem, max_evaluations=60, seed=2, journal=tmp_path / "j.db")
    assert resumed.n_replayed == 29 and resumed.trace == straight.trace


def test_a_fitness_that_never_returns_fails_after_eval_timeout():
    import threading

    release = threading.Event()

    def fn(levels):
        if levels[0] == 2:
            release.wait(30)  # hangs (until the test ends)
        return float(levels @ np.arange(8.0))

    try:
        res = minimize(fn, SPACE, max_evaluations=40, seed=0, eval_timeout=0.05)
    finally:
        release.set()
    hung = [e for e in res.history if e.levels[0] == 2]
    assert res.n_evaluations == 40 and hung
    assert all(e.error and "did not return within 0.05 s (eval_timeout)" in e.error for e in hung)
    assert res.best_levels[0] != 2 and np.isfinite(res.best_value)


# ------------------------------------------------------------------ inputs refused in one line
@pytest.mark.parametrize("seed", [1.5, True, -1, "3", None])
def test_a_seed_that_is_not_a_non_negative_integer_is_refused(seed):
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        minimize(lambda lv: 0.0, SPACE, max_evaluations=5, seed=seed)


@pytest.mark.parametrize("timeout", [0, -1.0, float("nan"), float("inf"), True, "5"])
def test_a_bad_eval_timeout_is_refused(timeout):
    with pytest.raises(ValueError, match="eval_timeout must be a positive number of seconds"):
        minimize(lambda lv: 0.0, SPACE, max_evaluations=5, eval_timeout=timeout)


@pytest.mark.parametrize(
    "levels, words",
    [
        ([0, 1, 1.5, 0], "fractional"),
        ([[0, 1, 1, 0]], r"shape \(1, 4\)"),
        ([0, -1, 1, 0], "level -1, outside 0..1"),
        ([0, 2, 0, 0], "level 2, outside 0..1"),
        ([2**70, 0, 0, 0], "levels must be integers|outside"),
        ([1e300, 0, 0, 0], "outside 0..2"),
        ([True, False, True, False], "dtype bool"),
        ([0, 1, [1], 0], "a list of 4 integer levels"),
    ],
)
def test_cost_refuses_levels_that_are_not_one_integer_in_range_per_unit(levels, words):
    space = LevelSpace([3, 2, 4, 2], costs=[[0, 1, 2], [0, 5], [0, 1, 2, 3], [0, 4]], total=6, tol=2)
    for method in (space.cost, space.group_totals, space.validate):
        with pytest.raises(ValueError, match=words) as info:
            method(levels)
        assert "\n" not in str(info.value)
    assert not space.is_feasible(levels)
    assert space.cost([2, 1, 0, 0]) == 7.0 and space.cost(np.array([2.0, 0, 3, 1])) == 9.0


def test_costs_whose_total_overflows_are_refused_at_construction():
    with pytest.raises(ValueError, match="costs are too large: their total overflows"):
        LevelSpace(2, n_units=3, costs=[[0, 1e308]] * 3, total=1e308)
    with pytest.raises(ValueError, match="total - tol overflows"):
        LevelSpace(2, n_units=2, total=-1e308, tol=1e308)


# ------------------------------------------------------------------ bands at the lowest assignment
BAND_COSTS = [[0, 1, 3], [0, 2, 3], [0, 1, 4], [0, 3, 5]]


@pytest.mark.parametrize("optimizer", ["evopress", "evopress-ref"])
@pytest.mark.parametrize("costs", [BAND_COSTS, None], ids=["unequal-steps", "equal-steps"])
def test_a_band_that_holds_the_all_lowest_assignment_is_searched(optimizer, costs):
    space = LevelSpace(3, n_units=4, total=6, tol=6, costs=costs)  # every total in [0, 6] is allowed
    weights = np.array([3.0, 1.0, 2.0, 0.5])

    def fn(lv):
        return float(-(weights @ lv))

    best = min(space.enumerate_feasible(), key=fn)
    res = minimize(fn, space, optimizer, max_evaluations=300, seed=0)
    assert res.n_evaluations > 5 and space.is_feasible(res.best_levels)
    assert res.best_value == fn(best)


@pytest.mark.parametrize("optimizer", ["evopress", "evopress-ref"])
def test_a_band_with_one_feasible_assignment_measures_it(optimizer):
    space = LevelSpace([3, 3], costs=[[0, 5, 9], [0, 5, 9]], total=1, tol=1)  # only [0, 0] fits
    res = minimize(lambda lv: 2.5, space, optimizer, max_evaluations=50)
    assert res.best_levels.tolist() == [0, 0] and res.best_value == 2.5 and res.n_evaluations == 1


def test_a_report_ignores_a_summary_whose_best_the_journal_does_not_hold(tmp_path):
    from levelsearch.config import parse_config
    from levelsearch.runner import run_config

    config = {"problem": LINEAR, "optimizer": {"name": "evopress", "offspring": 6}, "budget": {"max_evaluations": 40}}
    run_config(parse_config(config), tmp_path / "run", progress=False, plot=False)
    assert load_report(tmp_path / "run").summary is not None
    path = tmp_path / "run" / "summary.json"
    summary = json.loads(path.read_text())
    path.write_text(json.dumps({**summary, "best_value": summary["best_value"] / 2}))
    rep = load_report(tmp_path / "run")
    assert rep.summary is None and rep.status.startswith("in progress")


@pytest.mark.parametrize("command", ["report", "resume"])
def test_the_cli_refuses_an_edited_journal_with_one_line_and_exit_2(tmp_path, capsys, command):
    from levelsearch.cli import main
    from levelsearch.config import parse_config
    from levelsearch.runner import run_config

    config = {"problem": LINEAR, "optimizer": {"name": "evopress", "offspring": 6}, "budget": {"max_evaluations": 40}}
    run_config(parse_config(config), tmp_path / "run", progress=False, plot=False)
    _sql(tmp_path / "run" / "journal.db", "UPDATE evals SET value = value / 2 WHERE id = 7")
    capsys.readouterr()
    assert main([command, str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("levelsearch: error: journal ") and "altered at row 7" in err


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"n_levels": 2**70, "n_units": 3}, r"n_levels must be in 1\.\.100000"),
        ({"n_levels": 3, "n_units": 2**70}, r"n_units must be an integer in 1\.\.1000000"),
        ({"n_levels": 10**5, "n_units": 10**4}, "cost table of more than 50000000 cells"),
        ({"n_levels": [3, 3], "n_units": 2.0}, "n_units must be an integer"),
    ],
)
def test_a_space_too_large_to_hold_is_refused_before_anything_is_allocated(kwargs, words):
    with pytest.raises(ValueError, match=words):
        LevelSpace(**kwargs)


def test_an_append_interrupted_after_its_commit_leaves_a_chain_the_next_append_continues(tmp_path, monkeypatch):
    import levelsearch.journal as journal_module

    real, calls = journal_module._chain_next, [0]
    with Journal(tmp_path / "j.db", {"seed": 1}) as jr:
        jr.append(np.array([0, 1]), None, None, 1.0, None, 0.0, "local")
        stale = (jr._n_rows, jr._last_id, jr._head)
        jr.append(np.array([1, 0]), None, None, 2.0, None, 0.0, "local")
        jr._n_rows, jr._last_id, jr._head = stale  # the in-memory head lost, as by a Ctrl-C after the commit

        def counting(head, row):
            calls[0] += 1
            return real(head, row)

        monkeypatch.setattr(journal_module, "_chain_next", counting)
        jr.append(np.array([1, 1]), None, None, 3.0, None, 0.0, "local")
        jr.set_meta("result:dp", {"value": 3.0})
    with Journal(tmp_path / "j.db", readonly=True) as jr:
        assert [r.value for r in jr.records()] == [1.0, 2.0, 3.0] and jr.meta("result:dp") == {"value": 3.0}
    assert calls[0] >= 3  # the first try, the row it caught up with, the second try
