"""Where a results file came from: the command, the commit and the package versions that made it.

Every script in ``bench/`` that writes a results file puts ``provenance()`` under the key ``"provenance"``
(``bench/tables.py`` reads it back; a table whose file has none is refused). Use::

    from provenance import provenance          # bench/ is the script's own directory
    results["provenance"] = provenance()

or, from outside ``bench/``, ``python bench/provenance.py -- CMD ...`` prints the record for a command.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("levelsearch", "numpy", "scipy", "torch", "transformers", "safetensors", "gguf", "llama_cpp_python")


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def versions() -> dict[str, str]:
    """Installed versions of the packages a result depends on (absent ones left out)."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            continue
    return found


def provenance(argv: list[str] | None = None) -> dict[str, Any]:
    """The command (``argv``, default this process's), the commit (``+dirty`` when tracked files differ from it),
    the package versions and the machine's CPU count."""
    argv = list(sys.argv if argv is None else argv)
    if argv and argv[0].endswith(".py"):
        with contextlib.suppress(ValueError):
            argv[0] = str(Path(argv[0]).resolve().relative_to(ROOT))
        argv.insert(0, "python")
    commit = _git("rev-parse", "HEAD")
    if commit and _git("status", "--porcelain", "--untracked-files=no"):
        commit += "+dirty"
    return {
        "command": shlex.join(argv),
        "commit": commit or "unknown",
        "versions": versions(),
        "cpu_count": os.cpu_count(),
    }


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--"]:
        args = args[1:]
    print(json.dumps(provenance(args or None), indent=1))
