"""bench/tables.py: every published table is what its committed results files give, and a hand edit is caught."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "tables.py"


def _tables_module():
    spec = importlib.util.spec_from_file_location("bench_tables_under_test", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tables = _tables_module()


def _check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), "--check", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)


def _copy_pages(dest: Path) -> None:
    for name in tables.PAGES:
        if (ROOT / name).is_file():
            shutil.copy(ROOT / name, dest / name)
    if (ROOT / "docs").is_dir():
        shutil.copytree(ROOT / "docs", dest / "docs")


def test_published_tables_match_their_results_files():
    done = _check()
    assert done.returncode == 0, done.stderr
    assert tables.used_names(tables.pages(ROOT)), "no generated table in README.md, BENCHMARKS.md or docs/"


def test_a_number_edited_by_hand_fails_the_check(tmp_path):
    _copy_pages(tmp_path)
    assert _check("--root", str(tmp_path)).returncode == 0
    edited = None
    for page in tables.pages(tmp_path):
        text = page.read_text()
        match = tables.MARKER.search(text)
        if match:
            body = match.group(2)
            digit = next(i for i, ch in enumerate(body) if ch.isdigit() and i > body.index("|---"))
            new_body = body[:digit] + ("7" if body[digit] != "7" else "3") + body[digit + 1:]
            page.write_text(text[:match.start(2)] + new_body + text[match.end(2):])
            edited = page
            break
    assert edited is not None
    done = _check("--root", str(tmp_path))
    assert done.returncode == 1
    assert str(edited.relative_to(tmp_path)) in done.stderr or edited.name in done.stderr
    # the rewrite restores it
    rewrite = subprocess.run([sys.executable, str(SCRIPT), "--root", str(tmp_path)], cwd=ROOT,
                             capture_output=True, text=True, timeout=120, check=False)
    assert rewrite.returncode == 0, rewrite.stderr
    assert _check("--root", str(tmp_path)).returncode == 0


def test_render_replaces_only_marked_tables():
    text = "intro 1.5\n<!-- table:t -->\n| a |\n|---|\n| 9 |\n<!-- /table:t -->\noutro 2\n"
    out = tables.render(text, "page.md", {"t": "| a |\n|---|\n| 1 |"})
    assert out == "intro 1.5\n<!-- table:t -->\n| a |\n|---|\n| 1 |\n<!-- /table:t -->\noutro 2\n"


def test_a_filled_marker_without_a_table_is_refused_and_an_empty_one_allowed():
    empty = "<!-- table:later -->\n<!-- /table:later -->\n"
    assert tables.render(empty, "p.md", {}) == empty
    with pytest.raises(tables.TableError, match="table typed has content but no bench/tables_"):
        tables.render("<!-- table:typed -->\n| 1 |\n<!-- /table:typed -->\n", "p.md", {})


def test_an_unclosed_marker_is_refused():
    with pytest.raises(tables.TableError, match="p.md: marker table:x has no closing"):
        tables.render("<!-- table:x -->\n| 1 |\n", "p.md", {"x": "| 2 |"})


def test_a_results_file_without_provenance_is_refused(tmp_path, monkeypatch):
    results = tmp_path / "results"
    (results / "run" / "sub").mkdir(parents=True)
    monkeypatch.setattr(tables, "RESULTS", results)
    bare = results / "run" / "sub" / "numbers.json"
    bare.write_text(json.dumps({"value": 1.0}))
    with pytest.raises(tables.TableError, match="records no provenance"):
        tables.provenance_of(bare)
    own = results / "run" / "own.json"
    own.write_text(json.dumps({"value": 1.0, "provenance": {"command": "x", "commit": "abc", "versions": {}}}))
    assert tables.provenance_of(own)["command"] == "x"
    (results / "run" / "provenance.json").write_text(json.dumps({"command": "y", "commit": "def",
                                                                 "versions": "not recorded"}))
    assert tables.provenance_of(bare)["command"] == "y"  # a sidecar in a folder above counts
    (results / "run" / "provenance.json").write_text(json.dumps({"command": "y"}))
    with pytest.raises(tables.TableError, match="lacks one of the keys"):
        tables.provenance_of(bare)


def test_a_table_reading_outside_bench_results_is_refused():
    def reads_readme() -> str:
        (ROOT / "README.md").read_text()
        return "| a |\n|---|\n| 1 |"

    with pytest.raises(tables.TableError, match="reads README.md, which is not under bench/results/"):
        tables.build("sneaky", reads_readme, "bench/tables_x.py", committed=False)


def test_a_table_that_fails_is_one_line_naming_it():
    def broken() -> str:
        raise KeyError("heldout_ppl")

    with pytest.raises(tables.TableError, match=r"table broken \(bench/tables_x.py\) fails: KeyError"):
        tables.build("broken", broken, "bench/tables_x.py", committed=False)


def test_the_cli_says_one_line_and_exits_2_on_a_bad_root(tmp_path):
    done = _check("--root", str(tmp_path / "missing"))
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "--root" in done.stderr
