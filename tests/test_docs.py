"""Docs that cannot rot: the README's Python blocks and the package docstring examples run."""

from __future__ import annotations

import doctest
import re
from pathlib import Path

import pytest

import levelsearch

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.parametrize("index", range(len(_python_blocks())))
def test_readme_python_block_runs(index, capsys):
    exec(compile(_python_blocks()[index], f"README.md block {index}", "exec"), {})


def test_package_docstring_examples_pass():
    result = doctest.testmod(levelsearch, verbose=False)
    assert result.attempted > 0 and result.failed == 0
