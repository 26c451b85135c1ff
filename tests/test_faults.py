"""The fault matrix: a full disk, a read-only file system, signals at random points, and the file system watched.

Each fault ends a run with one line (exit 2, or 130 for Ctrl-C) and an intact journal, and a resumed run ends
exactly like an uninterrupted one. Every command of the matrix runs in a sandbox whose whole tree is compared
before and after: nothing may appear, change or vanish outside ``--out`` and the cache.

The full-disk and read-only cases mount a small tmpfs (root on Linux, as CI runs); elsewhere they are skipped
with the reason.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from test_resume import CLI, CONFIG, _journal_keys

pytestmark = pytest.mark.slow

RUN = """
problem: {kind: linear, n_units: 64, n_levels: 4, total: 96, seed: 0}
optimizer: {name: evopress, offspring: 8}
seed: 0
budget: {max_evaluations: 1500}
"""


def _cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "levelsearch.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=cwd,
    )


def _one_line_error(proc: subprocess.CompletedProcess, code: int = 2) -> str:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def _comparable(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in ("wall_seconds", "n_replayed", "resume")}


@contextmanager
def _tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir()
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root on Linux")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _remount(where: Path, opts: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{opts}", str(where)], check=True, capture_output=True)


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> dict:
    """The uninterrupted run every faulted run must end equal to."""
    d = tmp_path_factory.mktemp("straight")
    (d / "run.yaml").write_text(RUN)
    done = _cli("run", str(d / "run.yaml"), "--out", str(d / "run"), "--quiet")
    assert done.returncode == 0, done.stderr
    return json.loads((d / "run" / "summary.json").read_text())


@pytest.mark.parametrize("size", ["72k", "128k", "256k"])
def test_a_full_disk_stops_the_run_with_one_line_and_resume_equals_an_uninterrupted_run(tmp_path, straight, size):
    (tmp_path / "run.yaml").write_text(RUN)
    with _tmpfs(tmp_path / "disk", size) as disk:
        run = disk / "run"
        msg = _one_line_error(_cli("run", str(tmp_path / "run.yaml"), "--out", str(run), "--quiet"))
        assert "full" in msg and "resume" in msg
        assert not (run / "summary.json").exists() or json.loads((run / "summary.json").read_text())
        _remount(disk, "size=16m")
        done = _cli("resume", str(run), "--quiet")
        assert done.returncode == 0, done.stderr
        got = json.loads((run / "summary.json").read_text())
        assert _comparable(got) == _comparable(straight)
        keys = _journal_keys(run)
        assert len(keys) == len(set(keys)) == straight["n_evaluations"], "an evaluation was run twice"


def test_a_read_only_file_system_is_one_line_and_leaves_the_run_as_it_was(tmp_path):
    small = RUN.replace("max_evaluations: 1500", "max_evaluations: 100")
    (tmp_path / "run.yaml").write_text(small)
    (tmp_path / "more.yaml").write_text(small.replace("max_evaluations: 100", "max_evaluations: 300"))
    with _tmpfs(tmp_path / "disk", "8m") as disk:
        run = disk / "run"
        assert _cli("run", str(tmp_path / "run.yaml"), "--out", str(run), "--quiet").returncode == 0
        before = _tree(disk)
        _remount(disk, "ro")
        for args in (
            ("run", str(tmp_path / "more.yaml"), "--out", str(run), "--quiet"),  # continue with a larger budget
            ("run", str(tmp_path / "run.yaml"), "--out", str(disk / "new"), "--quiet"),  # a new run
        ):
            msg = _one_line_error(_cli(*args))
            assert "read-only" in msg.lower() or "not writable" in msg, msg
        assert _tree(disk) == before
        # reading needs no write access
        assert _cli("report", str(run)).returncode == 0


def test_a_burst_of_ctrl_c_at_random_points_stops_cleanly_and_resume_equals_uninterrupted(tmp_path):
    script = tmp_path / "cli.py"
    script.write_text(CLI)
    (tmp_path / "run.yaml").write_text(CONFIG)
    cmd = [sys.executable, str(script)]
    done = subprocess.run([*cmd, "run", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "straight"), "--quiet"])
    assert done.returncode == 0
    expected = json.loads((tmp_path / "straight" / "summary.json").read_text())

    run = tmp_path / "run"
    rng = np.random.default_rng(7)
    args = ["run", str(tmp_path / "run.yaml"), "--out", str(run), "--quiet"]
    for attempt in range(4):
        held = tmp_path / f"held{attempt}"
        already = len(_journal_keys(run)) if (run / "journal.db").exists() else 0
        at = int(rng.integers(1, 60))
        proc = subprocess.Popen(
            [*cmd, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "LEVELSEARCH_TEST_HOLD": f"{at}:{held}"},
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        deadline = time.monotonic() + 60
        while not held.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert held.exists(), f"the run never reached evaluation {at} (after {already} journaled)"
        for _ in range(int(rng.integers(2, 5))):  # a burst: the user hammers Ctrl-C
            proc.send_signal(signal.SIGINT)
            time.sleep(float(rng.uniform(0, 0.01)))
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert "Traceback" not in err, err
        assert f"levelsearch resume {run}" in err
        args = ["resume", str(run), "--quiet"]
    done = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    got = json.loads((run / "summary.json").read_text())
    assert _comparable(got) == _comparable(expected)
    keys = _journal_keys(run)
    assert len(keys) == len(set(keys)) == expected["n_evaluations"]


# ------------------------------------------------------------------ nothing written outside --out and the cache


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``root``: (size, mtime_ns) of files, (-1, 0) of folders."""
    out: dict[str, tuple[int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = (-1, 0)
        for f in filenames:
            p = os.path.join(dirpath, f)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (st.st_size, st.st_mtime_ns)
    return out


BENCH = """
problems:
  - {label: %(problem)s, kind: linear, n_units: 12, n_levels: 2, total: 4, seed: 0}
optimizers:
  - {label: %(optimizer)s, name: random}
seeds: [0]
budget: {max_evaluations: 20}
"""


def _sandbox_cases() -> list[tuple[str, list[str], int]]:
    """(name, CLI arguments with {root} for the sandbox, expected exit status)."""
    return [
        ("run", ["run", "{root}/run.yaml", "--out", "{root}/out/run", "--quiet"], 0),
        ("run-empty-out", ["run", "{root}/run.yaml", "--out", "", "--quiet"], 2),
        ("run-out-is-cwd", ["run", "{root}/run.yaml", "--out", ".", "--quiet"], 2),
        ("bench-traversal-optimizer", ["bench", "{root}/bench-opt.yaml", "--out", "{root}/out/bench"], 2),
        ("bench-traversal-problem", ["bench", "{root}/bench-prob.yaml", "--out", "{root}/out/bench"], 2),
        ("bench-absolute-label", ["bench", "{root}/bench-abs.yaml", "--out", "{root}/out/bench"], 2),
        ("bench", ["bench", "{root}/bench-ok.yaml", "--out", "{root}/out/bench"], 0),
    ]


@pytest.mark.parametrize(("args", "code"), [c[1:] for c in _sandbox_cases()], ids=[c[0] for c in _sandbox_cases()])
def test_a_command_writes_only_under_out_and_the_cache(tmp_path, args, code):
    root = tmp_path / "box"
    for d in ("cwd", "home", "tmp", "cache", "out"):
        (root / d).mkdir(parents=True)
    (root / "cwd" / "notes.txt").write_text("the user's own files")
    (root / "run.yaml").write_text(RUN.replace("max_evaluations: 1500", "max_evaluations: 60"))
    (root / "bench-ok.yaml").write_text(BENCH % {"problem": "lin", "optimizer": "rnd"})
    (root / "bench-opt.yaml").write_text(BENCH % {"problem": "lin", "optimizer": "../../../escaped"})
    (root / "bench-prob.yaml").write_text(BENCH % {"problem": "../../escaped", "optimizer": "rnd"})
    (root / "bench-abs.yaml").write_text(BENCH % {"problem": "lin", "optimizer": str(root / "escaped")})
    env = {
        **os.environ,
        "HOME": str(root / "home"),
        "TMPDIR": str(root / "tmp"),
        "LEVELSEARCH_CACHE": str(root / "cache"),
        "MPLCONFIGDIR": str(root / "cache" / "mpl"),
    }
    before = _tree(root)
    proc = _cli(*[a.replace("{root}", str(root)) for a in args], env=env, cwd=root / "cwd")
    if code:
        _one_line_error(proc, code)
    else:
        assert proc.returncode == 0, proc.stderr
    after = _tree(root)
    changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
    outside = [p for p in changed if not (p == "out" or p.startswith(("out/", "cache/", "cache")))]
    assert outside == [], f"written outside --out and the cache: {outside}"
    assert not list((root / "tmp").iterdir()), "temporary files left behind"
    assert not (root.parent / "escaped").exists() and not (root / "escaped").exists()
    if code:
        assert not any(p.startswith("out/") for p in changed), f"a refused command wrote {changed}"
