"""No silent wrong result in the core: a journal that checks itself, resume that re-measures, levels the
optimizer owns, budget bands at the lowest assignment, and inputs refused with one line."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from levelsearch import Journal, LevelSpace, make_problem, minimize
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


def test_a_journal_without_integrity_record_is_refused_in_one_line(tmp_path):
    _journal(tmp_path / "j.db")
    _sql(tmp_path / "j.db", "UPDATE meta SET value='[\"levelsearch-journal\", 1]' WHERE key='format'")
    with pytest.raises(ValueError, match=r"older levelsearch and has no integrity record") as info:
        Journal(tmp_path / "j.db", readonly=True)
    assert "\n" not in str(info.value)


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
