"""Bad inputs to the CLI: exit status 2, exactly one clear line on stderr, and the run directory untouched."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from levelsearch import Journal
from levelsearch.cli import main

GOOD = {
    "problem": "{kind: linear, n_units: 24, n_levels: 2, total: 6, seed: 0}",
    "optimizer": "{name: evopress, offspring: 8}",
    "seed": "0",
    "budget": "{max_evaluations: 100}",
}


def _yaml(**changes: str | None) -> str:
    d = {**GOOD, **changes}
    return "".join(f"{k}: {v}\n" for k, v in d.items() if v is not None)


def _write_foreign_journal(run: Path) -> None:
    with Journal(run / "journal.db", {"seed": 99, "problem": {"name": "other"}}) as jr:
        jr.append(np.zeros(24, dtype=np.int64), None, None, 1.0, None, 0.1, "local")


def _write_other_sqlite(run: Path) -> None:
    con = sqlite3.connect(run / "journal.db")
    con.execute("CREATE TABLE experiments (name TEXT)")
    con.execute("INSERT INTO experiments VALUES ('keep me')")
    con.commit()
    con.close()


def _write_other_config(run: Path) -> None:
    (run / "config.yaml").write_text(_yaml(seed="7"))


def _write_garbage(run: Path) -> None:
    (run / "journal.db").write_bytes(bytes(range(256)) * 64)


def _write_truncated_journal(run: Path) -> None:
    with Journal(run / "journal.db", {"seed": 0}) as jr:
        for k in range(300):
            jr.append(np.arange(24) % 2, 64, k, float(k), None, 0.0, "local")
    data = (run / "journal.db").read_bytes()
    (run / "journal.db").write_bytes(data[: len(data) // 3])


Setup = Callable[[Path], None] | None


def _in_a_run(setup: Callable[[Path], None]) -> Callable[[Path], None]:
    """``setup`` in a directory that holds a run of the same config (a journal needs its config.yaml)."""

    def both(run: Path) -> None:
        (run / "config.yaml").write_text(_yaml())
        setup(run)

    return both


# (id, config text, what is already in the run directory, words the error must contain)
CASES: list[tuple[str, str, Setup, str]] = [
    ("missing-problem", _yaml(problem=None), None, "problem: missing"),
    ("missing-budget", _yaml(budget=None), None, "budget: missing"),
    ("unknown-top-key", _yaml() + "budjet: {max_evaluations: 5}\n", None, "budjet: unknown key"),
    ("unknown-budget-key", _yaml(budget="{max_evals: 5}"), None, "budget.max_evals: unknown key"),
    ("unknown-problem-param", _yaml(problem="{kind: linear, n_unit: 8}"), None, "no parameter 'n_unit'"),
    ("unknown-problem-kind", _yaml(problem="{kind: lineer}"), None, "unknown problem kind 'lineer'"),
    ("unknown-optimizer", _yaml(optimizer="evopres"), None, "unknown optimizer 'evopres'"),
    ("unknown-optimizer-option", _yaml(optimizer="{name: evopress, ofspring: 3}"), None, "ofspring"),
    ("unknown-evaluator-key", _yaml() + "evaluator: {kind: serial, workers: 2}\n", None, "'workers' is for kind ray"),
    ("unknown-evaluator-kind", _yaml() + "evaluator: {kind: dask}\n", None, "evaluator.kind"),
    ("seed-not-int", _yaml(seed="zero"), None, "seed: must be an integer"),
    ("budget-string", _yaml(budget="{max_evaluations: '100'}"), None, "budget.max_evaluations: must be an integer"),
    ("problem-not-mapping", _yaml(problem="[1, 2]"), None, "problem: must be a mapping"),
    ("option-wrong-type", _yaml(optimizer="{name: evopress, offspring: many}"), None, "offspring"),
    ("retries-negative", _yaml() + "evaluator: {kind: serial, retries: -1}\n", None, "retries"),
    ("max-failures-zero", _yaml() + "max_consecutive_failures: 0\n", None, "max_consecutive_failures"),
    ("negative-max-evaluations", _yaml(budget="{max_evaluations: -5}"), None, "max_evaluations"),
    ("negative-max-cost", _yaml(budget="{max_cost: -1.5}"), None, "budget.max_cost: must be a finite number > 0"),
    ("infeasible-total", _yaml(problem="{kind: linear, n_units: 8, n_levels: 2, total: 20}"), None, "20"),
    (
        "max-cost-below-one-evaluation",
        _yaml(
            problem="{kind: noisy, base: {kind: linear, n_units: 8, total: 2}, max_fidelity: 4096}",
            optimizer="{name: evopress, steps: [[512, 2], [null, 1]]}",
            budget="{max_cost: 100}",
        ),
        None,
        "does not cover a single evaluation",
    ),
    ("yaml-syntax", "problem: {kind: linear\nbudget: [\n", None, "not valid YAML"),
    ("config-is-a-list", "- linear\n- evopress\n", None, "must be a mapping"),
    ("foreign-journal", _yaml(), _in_a_run(_write_foreign_journal), "belongs to a different run"),
    ("other-sqlite-database", _yaml(), _in_a_run(_write_other_sqlite), "not a levelsearch journal"),
    ("garbage-journal", _yaml(), _in_a_run(_write_garbage), "not a readable levelsearch journal"),
    ("truncated-journal", _yaml(), _in_a_run(_write_truncated_journal), "journal"),
    ("dir-of-another-config", _yaml(), _write_other_config, "different config"),
]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("levelsearch: error: ")
    return lines[0]


@pytest.mark.parametrize(("text", "setup", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_run_input_exits_2_with_one_line_and_keeps_the_run_directory(tmp_path, capsys, text, setup, words):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(text)
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("results of last week\n")
    if setup is not None:
        setup(run)
    before = _snapshot(run)
    assert main(["run", str(cfg), "--out", str(run), "--quiet"]) == 2
    line = _one_error_line(capsys)
    assert words in line
    assert _snapshot(run) == before


@pytest.mark.parametrize("setup", [_write_garbage, _write_foreign_journal, _write_truncated_journal])
def test_resume_of_a_bad_journal_exits_2_and_keeps_the_run_directory(tmp_path, capsys, setup):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(_yaml())
    setup(run)
    before = _snapshot(run)
    assert main(["resume", str(run), "--quiet"]) == 2
    _one_error_line(capsys)
    assert _snapshot(run) == before


def test_missing_config_file_exits_2(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "run")]) == 2
    assert "does not exist" in _one_error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_output_dir_that_cannot_be_created_exits_2(tmp_path, capsys):
    (tmp_path / "run.yaml").write_text(_yaml())
    (tmp_path / "a-file").write_text("keep")
    assert main(["run", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "a-file" / "run")]) == 2
    assert "cannot create output directory" in _one_error_line(capsys)
    assert (tmp_path / "a-file").read_text() == "keep"


def test_output_dir_that_is_a_file_exits_2(tmp_path, capsys):
    (tmp_path / "run.yaml").write_text(_yaml())
    (tmp_path / "a-file").write_text("keep")
    assert main(["run", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "a-file")]) == 2
    assert "is a file" in _one_error_line(capsys)
    assert (tmp_path / "a-file").read_text() == "keep"


def test_resume_of_a_directory_without_a_run_exits_2(tmp_path, capsys):
    assert main(["resume", str(tmp_path)]) == 2
    assert "holds no run" in _one_error_line(capsys)


def test_report_of_a_directory_without_a_journal_exits_2(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no journal" in _one_error_line(capsys)


def test_the_installed_command_prints_one_line_and_exits_2(tmp_path):
    """The same through a real process: nothing else (no traceback, no warning) reaches stderr."""
    run = tmp_path / "run"
    run.mkdir()
    _write_garbage(run)
    (tmp_path / "run.yaml").write_text(_yaml())
    before = _snapshot(run)
    cmd = [sys.executable, "-m", "levelsearch.cli", "run", str(tmp_path / "run.yaml"), "--out", str(run)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("levelsearch: error: ")
    assert proc.stdout == ""
    assert _snapshot(run) == before


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_output_dir_exits_2_and_keeps_its_files(tmp_path, capsys):
    (tmp_path / "run.yaml").write_text(_yaml())
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("keep")
    run.chmod(0o555)
    try:
        assert main(["run", str(tmp_path / "run.yaml"), "--out", str(run), "--quiet"]) == 2
        assert "not writable" in _one_error_line(capsys)
        assert _snapshot(run) == {"notes.txt": b"keep"}
    finally:
        run.chmod(0o755)


def test_exponent_numbers_without_a_sign_are_read_as_numbers(tmp_path, capsys):
    # YAML 1.1 would read 2.0e3 as a string; budgets in tokens are written that way
    cfg = tmp_path / "run.yaml"
    cfg.write_text(_yaml(budget="{max_evaluations: 100, max_cost: 2.0e3}"))
    assert main(["run", str(cfg), "--out", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "summary.json").is_file()
