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
    # outside codecs/, a kind's folder is never imported: the contract (codecs/base.py) and registry.py only
    for path in (ROOT / "adapters").rglob("*.py"):
        if "codecs" in path.relative_to(ROOT / "adapters").parts:
            continue
        bad = {n for n in _imports(path) if "codecs." in n and not n.endswith(("codecs.base", "codecs.registry"))}
        assert not bad, f"{path.relative_to(ROOT)} imports a codec module directly: {bad}"


PKG = "levelsearch.adapters"


def _adapter_modules() -> dict[str, tuple[Path, bool]]:
    """Every module of adapters/ by its installed dotted name, with its file and whether it is a package."""
    out: dict[str, tuple[Path, bool]] = {}
    for path in (ROOT / "adapters").rglob("*.py"):
        parts = list(path.relative_to(ROOT / "adapters").with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join([PKG] + (parts[:-1] if is_pkg else parts))] = (path, is_pkg)
    return out


def _executed_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node but those under ``if TYPE_CHECKING:`` (imports for annotations only, never run)."""
    out: list[ast.AST] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return out


def _import_edges(module: str, path: Path, is_pkg: bool) -> list[tuple[str, list[str], int]]:
    """(target module, imported names, line) of every import in the file, at module level or inside a function."""
    edges: list[tuple[str, list[str], int]] = []
    for node in _executed_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            edges.append((target, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            edges += [(a.name, [], node.lineno) for a in node.names]
    return edges


def _import_graph() -> dict[str, set[str]]:
    mods = _adapter_modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for module, (path, is_pkg) in mods.items():
        for target, names, _ in _import_edges(module, path, is_pkg):
            # `from pkg import sub` imports the submodule too
            for t in [target] + [f"{target}.{n}" for n in names]:
                if t in mods and t != module:
                    graph[module].add(t)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_the_cycle_finder_finds_a_circle_and_accepts_a_chain():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_imports_for_annotations_only_are_not_edges(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import A\nelse:\n    import b\n")
    assert sorted(t for t, _, _ in _import_edges(f"{PKG}.m", f, False)) == ["b", "typing"]


def test_adapters_have_no_import_circle_even_through_function_level_imports():
    short = [[m.removeprefix(PKG + ".") for m in comp] for comp in _cycles(_import_graph())]
    assert not short, f"import circles in adapters/: {short}"


def test_no_private_name_of_adapters_is_imported_across_modules():
    bad = []
    for module, (path, is_pkg) in _adapter_modules().items():
        for target, names, line in _import_edges(module, path, is_pkg):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and target != module and target.startswith(PKG):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {private} from {target}")
    assert not bad, "\n".join(bad)


def test_nothing_outside_the_cli_imports_the_cli():
    # the CLI parses arguments into settings; the run, the codecs and the formats never depend on it
    bad = []
    for module, (path, is_pkg) in _adapter_modules().items():
        if module == f"{PKG}.cli" or module.startswith(f"{PKG}.cli."):
            continue
        for target, names, line in _import_edges(module, path, is_pkg):
            reached = [target, *(f"{target}.{n}" for n in names)]
            if any(t == f"{PKG}.cli" or t.startswith(f"{PKG}.cli.") for t in reached):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not bad, "\n".join(bad)
