"""No function is longer than a reader can hold in mind: at most 80 lines of code each.

A function's length is counted from its ``def`` (decorators excluded) to its last line,
not counting its docstring: the docstring is what a caller reads, the rest is what a
reviewer must follow. Nested functions and methods are measured on their own (and count
towards the function that holds them too).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: the folders held to the limit (relative to the repository root)
CHECKED_FOLDERS = ("levelsearch", "baselines", "adapters")
MAX_LINES = 80


def _docstring_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    first = node.body[0] if node.body else None
    if (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
        and first.end_lineno is not None
    ):
        return first.end_lineno - first.lineno + 1
    return 0


def function_lengths(source: str) -> list[tuple[str, int, int]]:
    """``(qualified name, first line, lines of code)`` of every function and method in ``source``."""
    out: list[tuple[str, int, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert child.end_lineno is not None
                lines = child.end_lineno - child.lineno + 1 - _docstring_lines(child)
                out.append((f"{prefix}{child.name}", child.lineno, lines))
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return out


def _sources() -> list[Path]:
    return sorted(p for folder in CHECKED_FOLDERS for p in (ROOT / folder).rglob("*.py"))


def test_the_checked_folders_hold_python_files():
    for folder in CHECKED_FOLDERS:
        assert list((ROOT / folder).rglob("*.py")), f"{folder}/ has no Python file: is the folder list stale?"


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_function_is_longer_than_80_lines(path: Path):
    long = [
        f"{path.relative_to(ROOT)}:{line} {name} has {n} lines"
        for name, line, n in function_lengths(path.read_text())
        if n > MAX_LINES
    ]
    assert not long, "split into named steps: " + "; ".join(long)


def test_the_measure_catches_a_long_method_and_leaves_the_docstring_out():
    body = "\n".join(f"        x{k} = {k}" for k in range(MAX_LINES))
    doc = '        """' + "\n" * 30 + '        """\n'
    source = f"class A:\n    def long(self):\n{body}\n\n    def documented(self):\n{doc}        return 1\n"
    lengths = {name: n for name, _, n in function_lengths(source)}
    assert lengths == {"A.long": MAX_LINES + 1, "A.documented": 2}
