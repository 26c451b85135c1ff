"""`levelsearch report`: tables and plots from a journal, also for a run still writing it."""

from __future__ import annotations

import numpy as np

from levelsearch import Journal, make_problem, minimize
from levelsearch.cli import main
from levelsearch.config import parse_config
from levelsearch.report import best_so_far, load_report, write_report
from levelsearch.runner import run_config

NOISY = {"kind": "noisy", "base": {"kind": "linear", "n_units": 16, "total": 4}, "sigma": 2.0, "max_fidelity": 2048}
CONFIG = {
    "problem": NOISY,
    "optimizer": {"name": "evopress", "offspring": 6, "steps": [[128, 2], [None, 1]]},
    "budget": {"max_evaluations": 90},
}


def test_report_of_a_finished_run_has_the_tables_and_the_plot(tmp_path, capsys):
    run_config(parse_config(CONFIG), tmp_path / "run", progress=False, plot=False)
    assert main(["report", str(tmp_path / "run")]) == 0
    printed = capsys.readouterr().out
    md = (tmp_path / "run" / "report.md").read_text()
    assert printed.startswith(md.split("\n\n![report]")[0])
    assert "| evaluations | 90 |" in md and "| failures | 0 |" in md
    assert "stopped by max_evaluations" in md
    assert "| 128 | " in md and "| full | " in md  # evaluations per fidelity
    assert "## Best so far (fidelity full)" in md
    assert (tmp_path / "run" / "report.png").stat().st_size > 10_000


def test_best_so_far_is_per_fidelity_and_never_increases(tmp_path):
    problem = make_problem(NOISY)
    options = {"offspring": 6, "steps": [[128, 2], [None, 1]]}
    res = minimize(problem, options=options, seed=2, max_evaluations=120, journal=tmp_path / "journal.db")
    rep = load_report(tmp_path)
    assert rep.fidelities == ["128", "full"]
    for fid in rep.fidelities:
        n, cost, best = best_so_far(rep, fid)
        assert np.all(np.diff(best) < 0) and np.all(np.diff(n) > 0) and np.all(np.diff(cost) > 0)
    full = [e.value for e in res.history if e.fidelity is None]
    assert best_so_far(rep, "full")[2][-1] == min(full)
    assert rep.costs.sum() == res.cost


def test_report_reads_a_run_in_progress_without_disturbing_it(tmp_path):
    writer = Journal(tmp_path / "journal.db", {"problem": {"name": "p"}, "optimizer": "x", "seed": 0})
    for k in range(20):
        err = "RuntimeError: out of memory" if k % 5 == 0 else None
        writer.append(np.arange(8) % 2, 64 if k < 15 else None, k, float(20 - k), err, 0.5, "ray-0")
    text, md = write_report(tmp_path)
    assert "in progress" in text and "| evaluations | 20 |" in text and "| failures | 4 |" in text
    assert "RuntimeError: out of memory" in text and "| ray-0 | 20 | 4 |" in text
    writer.append(np.arange(8) % 2, None, 99, 0.5, None, 0.5, "ray-1")  # the run goes on
    assert len(load_report(tmp_path).records) == 21
    writer.close()
    assert md.with_name("report.png").is_file()
