"""``levelsearch bench``: config checking, the files it writes, determinism, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from levelsearch.bench import _run_one, load_bench_config, run_bench

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

TINY = {
    "name": "tiny",
    "seeds": [0, 1],
    "budget": {"max_evaluations": 40},
    "optimizers": ["evopress", "dp", {"name": "random", "label": "random-8", "options": {"batch": 8}}],
    "problems": [
        {"label": "lin", "kind": "linear", "n_units": 10, "n_levels": 2, "seed": 0},
        {
            "label": "noisy",
            "kind": "noisy",
            "base": {"kind": "linear", "n_units": 10},
            "max_fidelity": 64,
            "budget": {"max_cost": 2000},
            "options": {"evopress": {"offspring": 4, "steps": [[8, 2], [64, 1]]}},
        },
    ],
}


def _write(tmp_path: Path, cfg: dict) -> Path:
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("bench")
    before = {v: os.environ.get(v) for v in THREAD_VARS}
    run_bench(load_bench_config(_write(tmp, TINY)), tmp / "out", workers=1, progress=False)
    (tmp / "env.json").write_text(json.dumps([before, {v: os.environ.get(v) for v in THREAD_VARS}]))
    return tmp / "out"


def test_bench_leaves_the_callers_thread_settings_as_they_were(bench_dir: Path) -> None:
    # workers get one BLAS thread each; the caller (a notebook, a test session) must keep all of its own
    before, after = json.loads((bench_dir.parent / "env.json").read_text())
    assert after == before


def test_a_missing_config_is_a_file_not_found_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        load_bench_config(tmp_path / "nope.yaml")


def test_an_unknown_optimizer_is_refused_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown optimizer"):
        load_bench_config(_write(tmp_path, {**TINY, "optimizers": ["no-such-optimizer"]}))


def test_a_problem_without_budget_is_refused(tmp_path: Path) -> None:
    cfg = {k: v for k, v in TINY.items() if k != "budget"}
    cfg["problems"] = [{"kind": "linear", "n_units": 10}]
    with pytest.raises(ValueError, match="no budget"):
        load_bench_config(_write(tmp_path, cfg))


def test_report_lists_every_optimizer_in_every_table(bench_dir: Path) -> None:
    report = (bench_dir / "report.md").read_text()
    for section in report.split("\n## ")[1:3]:  # the two problems
        for label in ("evopress", "dp", "random-8"):
            assert section.count(f"| {label} |") == 2, (label, section)
    assert "EvoPress's cost to target divided by the best baseline's" in report


def test_raw_logs_have_one_row_per_evaluation(bench_dir: Path) -> None:
    csvs = sorted((bench_dir / "raw").rglob("*.csv"))
    assert len(csvs) == 2 * 3 * 2
    rows = (bench_dir / "raw" / "lin" / "random-8" / "seed0.csv").read_text().splitlines()
    assert rows[0] == "evaluation,cost,value,fidelity,recommended"
    assert len(rows) == 1 + 40


def test_iohprofiler_files_name_their_data_and_runs(bench_dir: Path) -> None:
    info = (bench_dir / "ioh" / "dp" / "IOHprofiler_f1_lin.info").read_text().splitlines()
    assert info[0].startswith('suite = "levelsearch", funcId = 1, funcName = "lin", DIM = 10')
    assert info[1] == "%"
    assert info[2].startswith("data_f1_lin/IOHprofiler_f1_DIM10.dat, 1:")
    dat = (bench_dir / "ioh" / "dp" / "data_f1_lin" / "IOHprofiler_f1_DIM10.dat").read_text().splitlines()
    assert sum(line.startswith('"function evaluation"') for line in dat) == 2  # one block per seed


def test_plots_are_written_for_every_problem(bench_dir: Path) -> None:
    for name in ("lin", "noisy"):
        for kind in ("convergence", "ecdf"):
            assert (bench_dir / f"{kind}_{name}.png").stat().st_size > 1000


def test_a_run_is_deterministic_given_optimizer_problem_and_seed(tmp_path: Path) -> None:
    task = {
        "optimizer": "evopress",
        "label": "evopress",
        "options": {"offspring": 4},
        "problem": {"kind": "interacting", "n_units": 12, "n_levels": 3, "seed": 1},
        "problem_label": "int",
        "optimum": None,
        "budget": {"max_evaluations": 60},
        "seed": 5,
        "max_seconds": None,
    }
    a = _run_one({**task, "csv": str(tmp_path / "a.csv")})
    b = _run_one({**task, "csv": str(tmp_path / "b.csv")})
    assert a["values"] == b["values"]
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()


def test_cli_reports_a_missing_config_in_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "levelsearch.cli", "bench", str(tmp_path / "nope.yaml"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("levelsearch: error:")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_running_the_same_grid_again_reuses_every_finished_run(tmp_path: Path) -> None:
    cfg = {**TINY, "optimizers": ["random"], "problems": TINY["problems"][:1]}
    out = tmp_path / "out"
    run_bench(load_bench_config(_write(tmp_path, cfg)), out, workers=1, progress=False)
    first = json.loads((out / "results.json").read_text())["runs"]
    kept = out / "raw" / "lin" / "random" / "seed0.json"
    stamp = kept.stat().st_mtime_ns
    run_bench(load_bench_config(_write(tmp_path, cfg)), out, workers=1, progress=False)
    again = json.loads((out / "results.json").read_text())["runs"]
    assert kept.stat().st_mtime_ns == stamp  # not run again
    key = lambda r: (r["optimizer"], r["seed"])  # noqa: E731
    assert sorted(map(json.dumps, sorted(first, key=key))) == sorted(map(json.dumps, sorted(again, key=key)))
    # other settings: the run is redone
    changed = {**cfg, "optimizers": [{"name": "random", "options": {"batch": 4}}]}
    run_bench(load_bench_config(_write(tmp_path, changed)), out, workers=1, progress=False)
    assert kept.stat().st_mtime_ns != stamp


# ------------------------------------------------------------------ configs the schema refuses
def _cli_bench(cfg_path: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> str:
    from levelsearch.cli import main

    assert main(["bench", str(cfg_path), "--out", str(out), "--no-progress", "--workers", "1"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("levelsearch: error: "), lines
    return lines[0]


SMALL = {
    "seeds": [0],
    "budget": {"max_evaluations": 20},
    "optimizers": ["random"],
    "problems": [{"label": "lin", "kind": "linear", "n_units": 8}],
}

BAD_BENCH: list[tuple[str, dict, str]] = [
    ("unknown-top-key", {**SMALL, "seed": [1]}, "seed: unknown key"),
    ("unknown-optimizer-key", {**SMALL, "optimizers": [{"name": "random", "opts": {}}]}, "optimizers[0].opts"),
    ("unknown-budget-key", {**SMALL, "budget": {"evaluations": 3}}, "budget.evaluations: unknown key"),
    ("no-seeds", {**SMALL, "seeds": []}, "seeds: must list at least 1"),
    ("repeated-seeds", {**SMALL, "seeds": [1, 1]}, "seeds[1]: repeats 1"),
    ("negative-max-seconds", {**SMALL, "max_seconds": -1}, "max_seconds: must be a finite number > 0"),
    ("nan-max-seconds", {**SMALL, "max_seconds": float("nan")}, "max_seconds: must be a finite number > 0"),
    ("nan-max-cost", {**SMALL, "budget": {"max_cost": float("nan")}}, "budget.max_cost: must be a finite number"),
    ("checkpoint-above-one", {**SMALL, "checkpoints": [0.5, 2.0]}, "checkpoints[1]: must be a finite number > 0"),
    ("checkpoint-zero", {**SMALL, "checkpoints": [0]}, "checkpoints[0]"),
    ("checkpoints-empty", {**SMALL, "checkpoints": []}, "checkpoints: must list at least 1"),
    ("checkpoint-string", {**SMALL, "checkpoints": ["half"]}, "checkpoints[0]"),
    ("optimizer-name-not-a-string", {**SMALL, "optimizers": [{"name": 7}]}, "optimizers[0].name: must be a string"),
    ("optimizer-entry-a-number", {**SMALL, "optimizers": [7]}, "optimizers[0]: must be a mapping"),
    (
        "huge-offspring",
        {**SMALL, "optimizers": ["random", {"name": "evopress", "options": {"offspring": 1e9}}]},
        "optimizers[1].options.offspring: must be an integer in 1..100000, got 1e+09",
    ),
    (
        "huge-offspring-per-problem",
        {**SMALL, "problems": [{"kind": "linear", "options": {"random": {"batch": 10**9}}}]},
        "problems[0].options.random.batch: must be an integer in 1..100000",
    ),
    ("options-of-no-optimizer", {**SMALL, "problems": [{"kind": "linear", "options": {"evopres": {}}}]}, "evopres"),
    ("unknown-problem-param", {**SMALL, "problems": [{"kind": "linear", "n_unit": 3}]}, "no parameter 'n_unit'"),
    ("unknown-problem-kind", {**SMALL, "problems": [{"kind": "lineer"}]}, "unknown problem kind 'lineer'"),
    ("traversing-optimizer-label", {**SMALL, "optimizers": [{"name": "random", "label": "../../../x"}]}, "plain name"),
    ("absolute-problem-label", {**SMALL, "problems": [{"kind": "linear", "label": "/tmp/x"}]}, "plain name"),
    ("dot-dot-label", {**SMALL, "problems": [{"kind": "linear", "label": ".."}]}, "plain name"),
    ("huge-residual-net", {**SMALL, "problems": [{"kind": "residual-net", "width": 10**6}]}, "width must be"),
]


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize(("cfg", "words"), [c[1:] for c in BAD_BENCH], ids=[c[0] for c in BAD_BENCH])
def test_a_bad_bench_config_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, cfg, words):
    work = tmp_path / "a" / "b" / "c"
    work.mkdir(parents=True)
    path = _write(work, cfg)
    before = _tree(tmp_path)
    line = _cli_bench(path, work / "out", capsys)
    assert words in line
    # the key is named in the file, or the problem by its label when it fails to build
    assert str(path) in line or "problem residual-net: residual-net: width" in line
    assert _tree(tmp_path) == before  # nothing in --out, nothing beside or above it


def test_labels_cannot_leave_out_even_through_the_python_api(tmp_path):
    cfg = load_bench_config(_write(tmp_path, SMALL))
    cfg["optimizers"][0]["label"] = "../../escaped"
    before = _tree(tmp_path)
    with pytest.raises(ValueError, match="optimizer label must be a plain name"):
        run_bench(cfg, tmp_path / "a" / "out", workers=1, progress=False)
    assert _tree(tmp_path) == before


def test_plain_labels_are_kept_and_used_as_folder_names(tmp_path):
    cfg = {**SMALL, "optimizers": [{"name": "random", "label": "rand.v2_b-8"}]}
    out = tmp_path / "out"
    run_bench(load_bench_config(_write(tmp_path, cfg)), out, workers=1, progress=False)
    assert (out / "raw" / "lin" / "rand.v2_b-8" / "seed0.csv").is_file()
    outside = {p for p in tmp_path.rglob("*") if out not in p.parents and p != out}
    assert outside == {tmp_path / "bench.yaml"}


def test_workers_out_of_range_is_one_line(tmp_path, capsys):
    from levelsearch.cli import main

    path = _write(tmp_path, SMALL)
    assert main(["bench", str(path), "--out", str(tmp_path / "out"), "--workers", "0"]) == 2
    assert "--workers must be an integer in 1..1024" in capsys.readouterr().err
    assert main(["bench", str(path), "--out", "", "--workers", "1"]) == 2
    assert "--out is empty" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_checkpoints_are_sorted_and_defaults_filled(tmp_path):
    cfg = load_bench_config(_write(tmp_path, {**SMALL, "checkpoints": [1.0, 0.5]}))
    assert cfg["checkpoints"] == [0.5, 1.0]
    assert load_bench_config(_write(tmp_path, {k: v for k, v in SMALL.items() if k != "seeds"}))["seeds"] == [0, 1, 2]


def test_a_directory_of_other_files_is_not_a_bench_out(tmp_path, capsys, monkeypatch):
    path = _write(tmp_path, SMALL)
    (tmp_path / "report.md").write_text("my own notes\n")
    monkeypatch.chdir(tmp_path)
    before = _tree(tmp_path)
    line = _cli_bench(path, Path("."), capsys)
    assert "the current directory holds other files (bench.yaml, ...) and no bench" in line
    assert _tree(tmp_path) == before


def test_a_fallback_a_run_took_is_kept_in_results_json_and_listed_in_the_report(tmp_path: Path) -> None:
    # a uniform start asked for, on two levels per unit whose budget no uniform assignment meets
    cfg = {
        **TINY,
        "seeds": [0],
        "optimizers": [{"name": "evopress", "options": {"start": "uniform"}}],
        "problems": TINY["problems"][:1],
    }
    out = tmp_path / "out"
    run_bench(load_bench_config(_write(tmp_path, cfg)), out, workers=1, progress=False)
    (run,) = json.loads((out / "results.json").read_text())["runs"]
    assert len(run["notes"]) == 1 and "no uniform assignment meets the budget" in run["notes"][0]
    report = (out / "report.md").read_text()
    assert f"## Notes\n\n- {run['notes'][0]} (evopress on lin seed 0)" in report
