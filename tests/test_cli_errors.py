"""Bad inputs to the CLI: exit status 2, exactly one clear line on stderr, and the run directory untouched."""

from __future__ import annotations

import json
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


def test_a_fallback_the_run_took_is_one_note_line_and_is_kept_in_summary_json(tmp_path):
    cfg = tmp_path / "run.yaml"  # a uniform start asked for, but 6 of 24 two-level units has no uniform assignment
    cfg.write_text(_yaml(optimizer="{name: evopress, offspring: 8, start: uniform}"))
    cmd = [sys.executable, "-m", "levelsearch.cli", "run", str(cfg), "--out", str(tmp_path / "run"), "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    note = (
        "EvoPress: no uniform assignment meets the budget; the search starts from the best of 16 random "
        "feasible ones instead (start='random')"
    )
    assert proc.stderr == f"levelsearch: note: {note}\n"
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["notes"] == [note]


def test_a_run_without_fallbacks_has_empty_notes_in_summary_json(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(_yaml())
    assert main(["run", str(cfg), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["notes"] == []


# ------------------------------------------------------------------ inputs the schema refuses, in one line
SCHEMA_CASES: list[tuple[str, str, str]] = [
    ("duplicate-key", _yaml() + "seed: 3\n", "duplicate key 'seed' at line 5"),
    ("huge-offspring", _yaml(optimizer="{name: evopress, offspring: 1e9}"), "optimizer.offspring: must be an integer"),
    ("huge-int-offspring", _yaml(optimizer="{name: evopress, offspring: 1000000000}"), "in 1..100000"),
    ("nan-max-cost", _yaml(budget="{max_cost: .nan}"), "budget.max_cost: must be a finite number"),
    ("inf-problem-param", _yaml(problem="{kind: noisy, sigma: .inf}"), "problem.sigma: must be a finite number"),
    ("optimizer-name-not-a-string", _yaml(optimizer="{name: 3}"), "optimizer.name: must be a string"),
    ("empty-budget", _yaml(budget="{}"), "budget: needs max_evaluations and/or max_cost"),
    (
        "alias-bomb",
        _yaml()
        + "x0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
        + "".join(f"x{i + 1}: &a{i + 1} [{', '.join([f'*a{i}'] * 10)}]\n" for i in range(8)),
        "aliases",
    ),
    ("recursive-alias", _yaml() + "x: &a [*a]\n", "recursive alias"),
]


@pytest.mark.parametrize(("text", "words"), [c[1:] for c in SCHEMA_CASES], ids=[c[0] for c in SCHEMA_CASES])
def test_a_config_the_schema_refuses_exits_2_with_one_line_before_anything_is_written(tmp_path, capsys, text, words):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(text)
    assert main(["run", str(cfg), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    line = _one_error_line(capsys)
    assert words in line and str(cfg) in line
    assert not (tmp_path / "run").exists()


def test_a_config_over_the_size_limit_is_not_read(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(_yaml() + "# " + "x" * (1 << 20) + "\n")
    assert main(["run", str(cfg), "--out", str(tmp_path / "run")]) == 2
    assert "larger than 1048576 bytes" in _one_error_line(capsys)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ where a run may write
def test_an_empty_out_is_refused_and_nothing_is_written_in_the_current_directory(tmp_path, capsys, monkeypatch):
    (tmp_path / "run.yaml").write_text(_yaml())
    monkeypatch.chdir(tmp_path)
    assert main(["run", "run.yaml", "--out", "", "--quiet"]) == 2
    assert "--out is empty" in _one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.yaml"]


def test_the_current_directory_with_other_files_is_refused(tmp_path, capsys, monkeypatch):
    (tmp_path / "run.yaml").write_text(_yaml())
    (tmp_path / "summary.json").write_text('{"mine": true}\n')
    monkeypatch.chdir(tmp_path)
    assert main(["run", "run.yaml", "--out", ".", "--quiet"]) == 2
    assert "the current directory holds other files" in _one_error_line(capsys)
    assert _snapshot(tmp_path) == {"run.yaml": _yaml().encode(), "summary.json": b'{"mine": true}\n'}


def test_a_directory_of_other_files_without_a_run_is_not_overwritten(tmp_path, capsys):
    (tmp_path / "run.yaml").write_text(_yaml())
    out = tmp_path / "results"
    out.mkdir()
    (out / "summary.json").write_text("{}\n")
    (out / "convergence.png").write_bytes(b"\x89PNG mine")
    before = _snapshot(out)
    assert main(["run", str(tmp_path / "run.yaml"), "--out", str(out), "--quiet"]) == 2
    assert "holds other files (convergence.png, ...) and no run (config.yaml)" in _one_error_line(capsys)
    assert _snapshot(out) == before


def test_an_empty_existing_directory_is_a_fine_out(tmp_path):
    (tmp_path / "run.yaml").write_text(_yaml())
    (tmp_path / "run").mkdir()
    assert main(["run", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "run"), "--quiet"]) == 0


def test_a_lower_budget_than_the_journal_spent_is_refused_and_the_summary_kept(tmp_path, capsys):
    (tmp_path / "run.yaml").write_text(_yaml(budget="{max_evaluations: 100}"))
    run = tmp_path / "run"
    assert main(["run", str(tmp_path / "run.yaml"), "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    before = _snapshot(run)
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("100", "20"))
    edited = _snapshot(run)
    assert main(["resume", str(run), "--quiet"]) == 2
    line = _one_error_line(capsys)
    assert "budget.max_evaluations=20 is below the 100 evaluations" in line
    assert _snapshot(run) == edited
    assert edited["summary.json"] == before["summary.json"]
    # the same through `run` with the lower budget
    (tmp_path / "low.yaml").write_text(_yaml(budget="{max_evaluations: 20}"))
    assert main(["run", str(tmp_path / "low.yaml"), "--out", str(run), "--quiet"]) == 2
    assert "below the 100 evaluations" in _one_error_line(capsys)
    assert _snapshot(run) == edited


def test_a_lower_cost_budget_than_the_journal_spent_is_refused(tmp_path, capsys):
    noisy = "{kind: noisy, base: {kind: linear, n_units: 8, total: 2}, max_fidelity: 64}"
    (tmp_path / "run.yaml").write_text(_yaml(problem=noisy, optimizer="random", budget="{max_cost: 640}"))
    run = tmp_path / "run"
    assert main(["run", str(tmp_path / "run.yaml"), "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    (tmp_path / "low.yaml").write_text(_yaml(problem=noisy, optimizer="random", budget="{max_cost: 64}"))
    before = _snapshot(run)
    assert main(["run", str(tmp_path / "low.yaml"), "--out", str(run), "--quiet"]) == 2
    assert "budget.max_cost=64 is below the cost 640" in _one_error_line(capsys)
    assert _snapshot(run) == before


def test_a_higher_budget_continues_the_run(tmp_path, capsys):
    (tmp_path / "run.yaml").write_text(_yaml(budget="{max_evaluations: 40}"))
    run = tmp_path / "run"
    assert main(["run", str(tmp_path / "run.yaml"), "--out", str(run), "--quiet"]) == 0
    (tmp_path / "more.yaml").write_text(_yaml(budget="{max_evaluations: 80}"))
    assert main(["run", str(tmp_path / "more.yaml"), "--out", str(run), "--quiet"]) == 0
    assert '"n_evaluations": 80' in (run / "summary.json").read_text()


# ------------------------------------------------------------------ signals
def _interrupt_a_run(tmp_path: Path, n_signals: int) -> tuple[subprocess.Popen[str], str]:
    """Start a long synthetic run, wait until it evaluates, send ``n_signals`` SIGINTs 50 ms apart."""
    import signal
    import time

    (tmp_path / "run.yaml").write_text(
        _yaml(problem="{kind: linear, n_units: 200, total: 50}", budget="{max_evaluations: 100000000}")
    )
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "levelsearch.cli", "run", str(tmp_path / "run.yaml"), "--out", str(run), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (run / "journal.db").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        for _ in range(n_signals):
            proc.send_signal(signal.SIGINT)
            time.sleep(0.05)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc, err


def test_a_second_ctrl_c_does_not_break_the_clean_stop(tmp_path):
    proc, err = _interrupt_a_run(tmp_path, 2)
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == [f"interrupted; resume with: levelsearch resume {tmp_path / 'run'}"]
    assert '"stopped_by": "interrupted"' in (tmp_path / "run" / "summary.json").read_text()


def test_a_burst_of_ctrl_c_stops_the_run_cleanly_with_130_and_one_line(tmp_path):
    proc, err = _interrupt_a_run(tmp_path, 5)
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == [f"interrupted; resume with: levelsearch resume {tmp_path / 'run'}"]
    assert '"stopped_by": "interrupted"' in (tmp_path / "run" / "summary.json").read_text()


def test_a_ctrl_c_long_after_the_first_ends_the_process_at_once(monkeypatch, capsys):
    from levelsearch import cli

    clock = iter([100.0, 100.5, 103.0])
    monkeypatch.setattr("time.monotonic", lambda: next(clock))

    def exit_now(code: int) -> None:
        raise SystemExit(code)

    monkeypatch.setattr(cli.os, "_exit", exit_now)
    stop = cli._StopSignals("; resume with: levelsearch resume runs/a")
    with pytest.raises(KeyboardInterrupt):
        stop(2, None)  # the first: a clean stop
    stop(2, None)  # half a second later: part of the burst, ignored
    with pytest.raises(SystemExit) as info:
        stop(2, None)  # three seconds later: the clean stop hangs, the user insists
    assert info.value.code == 130
    assert capsys.readouterr().err == (
        "levelsearch: interrupted again; stopped at once; resume with: levelsearch resume runs/a\n"
    )


def test_running_out_of_memory_is_one_line_and_exit_1(tmp_path, capsys, monkeypatch):
    import levelsearch.runner

    def no_memory(config):
        raise MemoryError

    monkeypatch.setattr(levelsearch.runner, "_build_problem", no_memory)
    (tmp_path / "run.yaml").write_text(_yaml())
    assert main(["run", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "run"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["levelsearch: error: out of memory; make the problem or the budget smaller"]
