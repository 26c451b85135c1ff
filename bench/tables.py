"""Every published table, rebuilt from the committed results files that back it.

Each ``bench/tables_<topic>.py`` defines ``TABLES = {"<name>": fn}``, ``fn() -> str`` a markdown table built only
from files under ``bench/results/``. In README.md, BENCHMARKS.md and ``docs/**/*.md`` the text between
``<!-- table:<name> -->`` and ``<!-- /table:<name> -->`` is that table::

    python bench/tables.py            # rewrite every marked table from the files
    python bench/tables.py --check    # exit 1 when a page differs from what the files give (CI)

While a table is built, every file it opens is watched: it must lie under ``bench/results/``, be tracked by git
(with ``--check``) and carry its provenance (the command, commit and package versions that made it), either as a
``"provenance"`` key of a JSON file or as a ``provenance.json`` beside it or in a folder above it within
``bench/results/``. A table that reads anything else is refused. An empty marker whose table no module defines
is allowed (it publishes nothing); a filled one is refused.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
PAGES = ("README.md", "BENCHMARKS.md")
MARKER = re.compile(r"<!-- table:([A-Za-z0-9_.-]+) -->\n(.*?)<!-- /table:\1 -->", re.S)
OPENING = re.compile(r"<!-- table:([A-Za-z0-9_.-]+) -->")
SIDECAR = "provenance.json"
PROVENANCE_KEYS = ("command", "commit", "versions")


class TableError(ValueError):
    """A page or a table that cannot be built: one line saying which and why."""


# --- which files a table reads ------------------------------------------------------------------------------

_opened: list[list[Path]] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if not _opened or event not in ("open", "sqlite3.connect"):
        return
    path = args[0] if args else None
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if isinstance(path, (str, os.PathLike)) and str(path) not in ("", ":memory:"):
        _opened[-1].append(Path(os.path.abspath(os.fspath(path))))


sys.addaudithook(_audit)


@contextlib.contextmanager
def _watch() -> Iterator[list[Path]]:
    seen: list[Path] = []
    _opened.append(seen)
    try:
        yield seen
    finally:
        _opened.pop()


# --- provenance -----------------------------------------------------------------------------------------------


def _has_provenance(record: Any) -> bool:
    return isinstance(record, dict) and all(key in record for key in PROVENANCE_KEYS)


def provenance_of(path: Path) -> dict[str, Any]:
    """The provenance record of a results file: its own ``"provenance"`` key, else the nearest ``provenance.json``
    in its folder or a folder above it within ``bench/results/``."""
    path = path.resolve()
    if path.suffix == ".json" and path.name != SIDECAR:
        with contextlib.suppress(OSError, ValueError):
            record = json.loads(path.read_text())
            if isinstance(record, dict) and _has_provenance(record.get("provenance")):
                return dict(record["provenance"])
    folder = path.parent
    while folder != RESULTS and RESULTS in folder.parents:
        sidecar = folder / SIDECAR
        if sidecar.is_file():
            try:
                record = json.loads(sidecar.read_text())
            except ValueError as err:
                raise TableError(f"{_rel(sidecar)} is not JSON: {err}") from None
            if not _has_provenance(record):
                raise TableError(f"{_rel(sidecar)} lacks one of the keys {', '.join(PROVENANCE_KEYS)}")
            return dict(record)
        folder = folder.parent
    raise TableError(
        f"{_rel(path)} records no provenance: give it a \"provenance\" key (bench/provenance.py) "
        f"or put a {SIDECAR} beside it"
    )


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _tracked(paths: list[Path]) -> set[Path]:
    if not paths:
        return set()
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--", *(_rel(p) for p in paths)],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return set(paths)  # no git (an unpacked archive): nothing to compare against
    if out.returncode != 0:
        return set(paths)
    return {(ROOT / name).resolve() for name in out.stdout.split("\0") if name}


def _check_inputs(name: str, opened: list[Path], *, committed: bool) -> list[Path]:
    inputs: list[Path] = []
    for path in dict.fromkeys(opened):
        if path.suffix in (".py", ".pyc") or path.is_dir() or path.name == SIDECAR:
            continue
        if RESULTS not in path.parents:
            if ROOT in path.parents and ".venv" not in path.parts:
                raise TableError(f"table {name} reads {_rel(path)}, which is not under bench/results/")
            continue
        provenance_of(path)
        inputs.append(path)
    if committed:
        tracked = _tracked(inputs)
        missing = [p for p in inputs if p.resolve() not in tracked]
        if missing:
            raise TableError(f"table {name} reads {_rel(missing[0])}, which git does not track: commit it")
    return inputs


# --- the table modules ----------------------------------------------------------------------------------------


def _load_module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_levelsearch_tables_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise TableError(f"cannot load {_rel(path)}")
    module = importlib.util.module_from_spec(spec)
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))  # table modules import their neighbours, as scripts in bench/ do
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # noqa: BLE001 - one line naming the module, whatever it raised
        raise TableError(f"{_rel(path)} fails to import: {type(err).__name__}: {err}") from None
    return module


def collect(bench: Path = BENCH) -> dict[str, tuple[Callable[[], str], str]]:
    """Every table of every ``bench/tables_*.py``: name -> (function, module path)."""
    tables: dict[str, tuple[Callable[[], str], str]] = {}
    for path in sorted(bench.glob("tables_*.py")):
        module = _load_module(path)
        found = getattr(module, "TABLES", None)
        if not isinstance(found, dict):
            raise TableError(f"{_rel(path)} defines no TABLES dict")
        for name, fn in found.items():
            if not isinstance(name, str) or not OPENING.fullmatch(f"<!-- table:{name} -->") or not callable(fn):
                raise TableError(f"{_rel(path)}: TABLES[{name!r}] must map a plain name to a function")
            if name in tables:
                raise TableError(f"table {name} is defined twice: in {tables[name][1]} and {_rel(path)}")
            tables[name] = (fn, _rel(path))
    return tables


def build(name: str, fn: Callable[[], str], module: str, *, committed: bool) -> str:
    """The table's markdown, after checking every file it read."""
    with _watch() as opened:
        try:
            text = fn()
        except TableError:
            raise
        except Exception as err:  # noqa: BLE001 - one line naming the table, whatever it raised
            raise TableError(f"table {name} ({module}) fails: {type(err).__name__}: {err}") from None
    if not isinstance(text, str) or not text.strip():
        raise TableError(f"table {name} ({module}) returned no text")
    _check_inputs(name, opened, committed=committed)
    return text.strip("\n")


# --- the pages --------------------------------------------------------------------------------------------------


def pages(root: Path) -> list[Path]:
    """README.md, BENCHMARKS.md and every markdown page under docs/, those that exist."""
    found = [root / name for name in PAGES if (root / name).is_file()]
    docs = root / "docs"
    if docs.is_dir():
        found += sorted(p for p in docs.rglob("*.md") if p.is_file())
    return found


def render(text: str, page: str, tables: dict[str, str]) -> str:
    """``text`` with every marked table replaced by its built version."""
    closed = {m.start() for m in MARKER.finditer(text)}
    for opening in OPENING.finditer(text):
        if opening.start() not in closed:
            raise TableError(f"{page}: marker table:{opening.group(1)} has no closing <!-- /table:"
                             f"{opening.group(1)} --> on a line after it")

    def replace(match: re.Match[str]) -> str:
        name, body = match.group(1), match.group(2)
        if name not in tables:
            if body.strip():
                raise TableError(f"{page}: table {name} has content but no bench/tables_*.py defines it")
            return match.group(0)
        return f"<!-- table:{name} -->\n{tables[name]}\n<!-- /table:{name} -->"

    return MARKER.sub(replace, text)


def used_names(files: list[Path]) -> set[str]:
    return {m.group(1) for path in files for m in OPENING.finditer(path.read_text())}


def run(root: Path, *, check: bool, committed: bool) -> list[str]:
    """Rebuild (or, with ``check``, compare) every marked table under ``root``; the pages that differ."""
    files = pages(root)
    wanted = used_names(files)
    defined = collect()
    built = {name: build(name, fn, module, committed=committed)
             for name, (fn, module) in defined.items() if name in wanted}
    differ = []
    for path in files:
        text = path.read_text()
        new = render(text, _rel(path), built)
        if new != text:
            differ.append(_rel(path))
            if not check:
                path.write_text(new)
    return differ


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 when a page differs from what the files give")
    parser.add_argument("--root", type=Path, default=ROOT,
                        help="where README.md, BENCHMARKS.md and docs/ are (default: the repository)")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        print(f"tables: --root {args.root} is not a directory", file=sys.stderr)
        return 2
    try:
        differ = run(args.root, check=args.check, committed=args.check)
    except (TableError, OSError) as err:
        print(f"tables: {err}", file=sys.stderr)
        return 2
    for page in differ:
        if args.check:
            print(f"tables: {page} differs from its results files; run python bench/tables.py", file=sys.stderr)
        else:
            print(f"tables: rewrote {page}")
    return 1 if args.check and differ else 0


if __name__ == "__main__":
    sys.exit(main())
