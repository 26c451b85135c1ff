"""Docs that cannot rot: the Python blocks of README.md and docs/ run, the package docstring examples pass, the
site's configuration fails its build on a broken link, and no page speaks of how the project was developed."""

from __future__ import annotations

import doctest
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import levelsearch

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _python_blocks() -> list[tuple[str, str]]:
    return [(page.relative_to(ROOT).as_posix(), block) for page in PAGES
            for block in re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)]


@pytest.mark.parametrize("index", range(len(_python_blocks())))
def test_python_block_runs(index, capsys):
    page, block = _python_blocks()[index]
    exec(compile(block, f"{page} block {index}", "exec"), {})


def test_package_docstring_examples_pass():
    result = doctest.testmod(levelsearch, verbose=False)
    assert result.attempted > 0 and result.failed == 0


def test_every_page_is_in_the_site_navigation():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    listed = {next(iter(item.values())) for item in config["nav"]}
    pages = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")}
    assert pages == listed


@pytest.mark.skipif(shutil.which("mkdocs", path=str(Path(sys.executable).parent)) is None,
                    reason="mkdocs is not installed (pip install 'levelsearch[docs]')")
def test_a_broken_link_fails_the_strict_build(tmp_path):
    # the site's own settings (strict, link validation, extensions) on two small pages, without the API pages
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    config["plugins"] = ["search"]
    config["nav"] = [{"Home": "index.md"}, {"Other": "other.md"}]
    config["docs_dir"], config["site_dir"] = str(tmp_path / "docs"), str(tmp_path / "site")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text("# Other\n")
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config))
    mkdocs = [str(Path(sys.executable).parent / "mkdocs"), "build", "-f", str(tmp_path / "mkdocs.yml")]

    (tmp_path / "docs" / "index.md").write_text("# Home\n\nSee [the other page](other.md).\n")
    good = subprocess.run(mkdocs, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert good.returncode == 0, good.stderr
    (tmp_path / "docs" / "index.md").write_text("# Home\n\nSee [a page that is not there](missing.md).\n")
    bad = subprocess.run(mkdocs, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert bad.returncode != 0
    assert "missing.md" in bad.stderr


DEVELOPMENT_WORDS = re.compile(r"\bsession\b|\bissue \d+|\bthe issue\b|\bstop \d+\b", re.I)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_pages_speak_of_the_product_not_of_its_development(page):
    hits = [line for line in page.read_text().splitlines() if DEVELOPMENT_WORDS.search(line)]
    assert not hits, hits
