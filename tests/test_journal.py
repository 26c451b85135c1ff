"""The journal: durable, self-describing, and it refuses what it did not write."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import numpy as np
import pytest

import levelsearch
from levelsearch import Journal, JournalMismatch, LevelSpace, make_problem, minimize
from levelsearch.evopress import EvoPress
from levelsearch.optimizer import Request

LINEAR = {"kind": "linear", "n_units": 16, "n_levels": 2, "total": 4, "seed": 0}


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_records_read_back_what_was_appended(tmp_path):
    with Journal(tmp_path / "j.db", {"run": 1}) as jr:
        jr.append(np.array([0, 1, 2]), 128, 7, 0.5, None, 0.25, "w0")
        jr.append(np.array([2, 1, 0]), None, None, float("nan"), None, 0.1, "w1")
        jr.append(np.array([1, 1, 1]), 64, 3, float("inf"), "ValueError: boom", 0.2, "w0")
        recs = list(jr.records())
    assert [r.levels.tolist() for r in recs] == [[0, 1, 2], [2, 1, 0], [1, 1, 1]]
    assert [(r.fidelity, r.sample, r.worker) for r in recs] == [(128, 7, "w0"), (None, None, "w1"), (64, 3, "w0")]
    assert recs[0].value == 0.5 and recs[0].ok and recs[0].seconds == 0.25
    assert recs[1].value == float("inf") and recs[1].error == "fitness returned nan"
    assert recs[2].value == float("inf") and recs[2].error == "ValueError: boom"


def test_stores_identity_and_package_version(tmp_path):
    with Journal(tmp_path / "j.db", {"problem": {"n": 3}, "seed": 5}) as jr:
        assert jr.meta("identity") == {"problem": {"n": 3}, "seed": 5}
        assert jr.meta("levelsearch_version") == levelsearch.__version__


def test_a_reader_sees_results_while_the_writer_is_open(tmp_path):
    writer = Journal(tmp_path / "j.db", {"run": 1})
    writer.append(np.array([0, 1]), None, None, 1.0, None, 0.0, "local")
    with Journal(tmp_path / "j.db", readonly=True) as reader:
        assert len(reader) == 1
        writer.append(np.array([1, 0]), None, None, 2.0, None, 0.0, "local")
        assert [r.value for r in reader.records()] == [1.0, 2.0]
        with pytest.raises(ValueError, match="read-only"):
            reader.append(np.array([1, 1]), None, None, 3.0, None, 0.0, "local")
    writer.close()


def test_reading_a_closed_journal_leaves_its_directory_as_it_was(tmp_path):
    with Journal(tmp_path / "j.db", {"run": 1}) as jr:
        jr.append(np.array([0, 1]), None, None, 1.0, None, 0.0, "local")
    before = _snapshot(tmp_path)
    with Journal(tmp_path / "j.db", readonly=True) as reader:
        assert [r.value for r in reader.records()] == [1.0]
    assert _snapshot(tmp_path) == before  # no j.db-wal / j.db-shm left by the reading
    # while a writer has it open, the side files are the writer's: a reader leaves them
    writer = Journal(tmp_path / "j.db", {"run": 1})
    writer.append(np.array([1, 0]), None, None, 2.0, None, 0.0, "local")
    with Journal(tmp_path / "j.db", readonly=True) as reader:
        assert len(reader) == 2
    assert (tmp_path / "j.db-wal").exists()
    writer.close()


def test_journal_of_another_run_is_refused_and_left_unchanged(tmp_path):
    with Journal(tmp_path / "j.db", {"seed": 1}) as jr:
        jr.append(np.array([0, 1]), None, None, 1.0, None, 0.0, "local")
    before = _snapshot(tmp_path)
    with pytest.raises(JournalMismatch, match=r"different run \(seed: journal has 1, this run has 2\)"):
        Journal(tmp_path / "j.db", {"seed": 2})
    assert _snapshot(tmp_path) == before


def test_another_sqlite_database_is_refused_untouched(tmp_path):
    con = sqlite3.connect(tmp_path / "other.db")
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    before = _snapshot(tmp_path)
    with pytest.raises(ValueError, match="not a levelsearch journal"):
        Journal(tmp_path / "other.db", {"seed": 1})
    assert _snapshot(tmp_path) == before


def test_a_text_file_is_refused_untouched(tmp_path):
    (tmp_path / "j.db").write_text("my notes, not a journal\n" * 50)
    before = _snapshot(tmp_path)
    with pytest.raises(ValueError, match="not a readable levelsearch journal"):
        Journal(tmp_path / "j.db", {"seed": 1})
    assert _snapshot(tmp_path) == before


def test_a_truncated_journal_is_refused(tmp_path):
    with Journal(tmp_path / "j.db", {"seed": 1}) as jr:
        for k in range(400):
            jr.append(np.arange(64) % (k + 2), 128, k, float(k), None, 0.0, "local")
    data = (tmp_path / "j.db").read_bytes()
    (tmp_path / "j.db").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="damaged|not a readable"), Journal(tmp_path / "j.db", {"seed": 1}) as jr:
        list(jr.records())


def test_an_sqlite_file_without_tables_is_refused_and_left_untouched(tmp_path):
    """A journal is linked into place complete, so a header-only database was never one of ours."""
    con = sqlite3.connect(tmp_path / "j.db")
    con.execute("PRAGMA journal_mode=WAL")  # writes the header, creates no table
    con.close()
    before = (tmp_path / "j.db").read_bytes()
    with pytest.raises(ValueError, match="holds no levelsearch journal"):
        Journal(tmp_path / "j.db", {"seed": 1})
    assert (tmp_path / "j.db").read_bytes() == before


def test_a_new_journal_appears_complete_and_leaves_no_temporary_file(tmp_path):
    with Journal(tmp_path / "j.db", {"seed": 1}) as jr:
        assert len(jr) == 0 and jr.meta("identity") == {"seed": 1}
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("j.db-")) == ["j.db"]


def test_readonly_journal_that_does_not_exist_is_a_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        Journal(tmp_path / "missing.db", readonly=True)


def test_rerunning_a_finished_journal_calls_the_oracle_only_for_its_spot_checks(tmp_path):
    problem = make_problem(LINEAR)
    calls = []

    def fn(levels):
        calls.append(1)
        return problem.evaluate(levels)

    space = problem.space
    first = minimize(fn, space, max_evaluations=120, seed=3, journal=tmp_path / "j.db")
    n_first = len(calls)
    again = minimize(fn, space, max_evaluations=120, seed=3, journal=tmp_path / "j.db")
    assert n_first == 120 and len(calls) == n_first + 3
    assert again.n_replayed == 120 and again.n_spot_checks == 3 and again.n_evaluations == first.n_evaluations
    none = minimize(fn, space, max_evaluations=120, seed=3, journal=tmp_path / "j.db", spot_checks=0)
    assert len(calls) == n_first + 3 and none.n_spot_checks == 0
    assert again.best_levels.tolist() == first.best_levels.tolist() and again.best_value == first.best_value
    assert [e.value for e in again.history] == [e.value for e in first.history]


def test_raising_the_budget_continues_exactly_like_one_long_run(tmp_path):
    problem = make_problem({"kind": "noisy", "base": LINEAR, "sigma": 5.0, "max_fidelity": 4096})
    opts = {"offspring": 8, "steps": [[256, 2], [None, 1]]}
    straight = minimize(problem, options=opts, seed=4, max_evaluations=300)
    minimize(problem, options=opts, seed=4, max_evaluations=130, journal=tmp_path / "j.db")
    resumed = minimize(problem, options=opts, seed=4, max_evaluations=300, journal=tmp_path / "j.db")
    assert resumed.n_replayed == 130
    assert [(e.levels.tolist(), e.fidelity, e.sample, e.value) for e in resumed.history] == [
        (e.levels.tolist(), e.fidelity, e.sample, e.value) for e in straight.history
    ]
    assert resumed.trace == straight.trace
    assert resumed.best_levels.tolist() == straight.best_levels.tolist()


def test_minimize_refuses_a_journal_of_another_seed(tmp_path):
    problem = make_problem(LINEAR)
    minimize(problem, max_evaluations=20, seed=1, journal=tmp_path / "j.db")
    with pytest.raises(JournalMismatch, match="seed: journal has 1, this run has 2"):
        minimize(problem, max_evaluations=20, seed=2, journal=tmp_path / "j.db")


class _CheckingOptimizer(EvoPress):
    """EvoPress that checks, whenever it is told values, that every one of them is already journaled."""

    journal_path = ""

    def tell(self, requests: Sequence[Request], values: Sequence[float]) -> None:
        with Journal(self.journal_path, readonly=True) as jr:
            journaled = {r.levels.tobytes() for r in jr.records()}
        assert all(r.levels.astype(np.int64).tobytes() in journaled for r in requests)
        super().tell(requests, values)


def test_every_result_is_journaled_before_the_optimizer_is_told(tmp_path):
    space = LevelSpace(2, n_units=12, total=3)
    opt = _CheckingOptimizer(space, seed=0, offspring=6)
    opt.journal_path = str(tmp_path / "j.db")
    res = minimize(lambda lv: float(lv @ np.arange(12.0)), space, opt, max_evaluations=60, journal=opt.journal_path)
    assert res.n_evaluations == 60


def test_a_second_writer_is_refused_while_the_first_is_open(tmp_path):
    first = Journal(tmp_path / "j.db", {"seed": 1})
    with pytest.raises(ValueError, match="in use by another levelsearch process"):
        Journal(tmp_path / "j.db", {"seed": 1})
    with Journal(tmp_path / "j.db", readonly=True) as reader:  # readers are welcome
        assert len(reader) == 0
    first.close()
    with Journal(tmp_path / "j.db", {"seed": 1}) as again:
        assert len(again) == 0


def test_a_write_that_fails_is_an_os_error_saying_what_to_do(tmp_path):
    with Journal(tmp_path / "j.db", {"seed": 1}) as jr:
        jr._db().execute("PRAGMA query_only=ON")  # stands in for a full disk or a read-only mount
        with pytest.raises(OSError, match="cannot write to journal .*then resume the run"):
            jr.append(np.array([0, 1]), None, None, 1.0, None, 0.0, "local")
