"""Published tables of the search itself (optimizer overhead, the stopping rule, where search pays), built from
the committed files under ``bench/results/`` by ``bench/tables.py``."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def _read(rel: str) -> Any:
    return json.loads((RESULTS / rel).read_text())


def _markdown(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


OVERHEAD_NAMES = {
    "evopress-ref": "evopress-ref",
    "evopress:surrogate=false": "evopress, no surrogate",
    "evopress": "**evopress** (surrogate on)",
}


def overhead() -> str:
    """Milliseconds of optimizer work per candidate (ask + tell, a free fitness), before and after the sparse
    surrogate, with each run's ratio to evopress-ref measured in the same run."""
    runs = [("before", _read("overhead/before/overhead.json")), ("now", _read("overhead/overhead.json"))]
    sizes = [str(n) for n in runs[-1][1]["sizes"]]
    header = ["optimizer", "code"] + [f"n = {int(n):,}" for n in sizes] + ["× evopress-ref at n = 1,000"]
    rows = []
    for key, name in OVERHEAD_NAMES.items():
        for label, run in runs:
            row = run["optimizers"].get(key)
            if row is None:
                continue
            commit = (run.get("levelsearch_commit") or "")[:7]
            cells = [f"{row['ms_per_candidate'][n]:.3f}" for n in sizes]
            ratio = row.get("ratio_to_evopress_ref", {}).get("1000")
            rows.append([name, f"{label} ({commit})", *cells, "" if ratio is None else f"{ratio:.1f}"])
    load = ", ".join(f"{run['load_average'][0]:.0f}" for _, run in runs)
    note = (
        f"\n\n{runs[-1][1]['candidates']:,} candidates per cell; {runs[-1][1]['cpus']} CPUs with a load average "
        f"of {load} (before, now): compare within a run, by the ratio."
    )
    return _markdown(header, rows) + note


TABLES: dict[str, Callable[[], str]] = {"overhead": overhead}
