"""The arrows point one way: the core stays light and never imports adapters or baselines."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = (
    "torch",
    "transformers",
    "optuna",
    "nevergrad",
    "ray",
    "matplotlib",
    "levelsearch.adapters",
    "levelsearch.baselines",
)


def test_importing_levelsearch_pulls_no_heavy_dependency():
    code = f"import sys, levelsearch; print([m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(("." * node.level) + node.module)
    return names


def test_core_modules_never_import_adapters_or_baselines():
    for path in (ROOT / "levelsearch").glob("*.py"):
        bad = {n for n in _imports(path) if "adapters" in n or "baselines" in n}
        assert not bad, f"{path.name} imports {bad}"


def test_adapters_and_baselines_do_not_import_each_other():
    for folder, other in (("adapters", "baselines"), ("baselines", "adapters")):
        for path in (ROOT / folder).rglob("*.py"):
            bad = {n for n in _imports(path) if other in n}
            assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_kernels_are_pure_numerics_that_import_only_each_other():
    allowed = {"__future__", "collections.abc", "dataclasses", "math", "numpy", "torch"}
    for path in (ROOT / "adapters" / "kernels").glob("*.py"):
        names = _imports(path)
        bad = {n for n in names if n not in allowed and not (n.startswith(".") and n.count(".") == 1)}
        assert not bad, f"kernels/{path.name} imports {bad}"


KINDS = {"drop", "sparsity", "quant", "joint"}


def test_no_module_outside_the_codecs_branches_on_a_compression_kinds_name():
    # a comparison of a kind or method name with a built-in kind's name: what codecs replaced
    for path in (ROOT / "adapters").rglob("*.py"):
        if "codecs" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Compare):
                continue
            consts = {c.value for c in ast.walk(node) if isinstance(c, ast.Constant) and isinstance(c.value, str)}
            text = ast.unparse(node)
            assert not (consts & KINDS and ("kind" in text or "method" in text)), f"{path.name}: {text}"


def test_shared_modules_reach_a_kind_only_through_the_registry():
    # outside codecs/, a kind's folder is never imported: the contract (codecs/base.py) and the registry only
    for path in (ROOT / "adapters").rglob("*.py"):
        if "codecs" in path.relative_to(ROOT / "adapters").parts:
            continue
        bad = {n for n in _imports(path) if "codecs." in n and not n.endswith("codecs.base")}
        assert not bad, f"{path.relative_to(ROOT)} imports a codec module directly: {bad}"
