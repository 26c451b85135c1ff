"""Published tables of the synthetic benchmarks (``levelsearch bench``), taken from the ``report.md`` that the
bench command wrote beside its ``results.json.gz`` (every run's curve and values) in ``bench/results/<dir>/``, so
a published table cannot disagree with its report. Built by ``bench/tables.py``."""

from __future__ import annotations

import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _sections(report: str) -> dict[str, str]:
    """The report's ``## heading`` sections: heading -> text up to the next ``## ``."""
    parts = re.split(r"^## (.+)$", report, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def _first_table(text: str) -> list[str]:
    lines, table = text.splitlines(), []
    for line in lines:
        if line.startswith("|"):
            table.append(line)
        elif table:
            break
    if not table:
        raise ValueError("no table in the section")
    return table


def _report(folder: str) -> dict[str, str]:
    return _sections((RESULTS / folder / "report.md").read_text())


def _verbatim(folder: str, heading: str) -> str:
    sections = _report(folder)
    if heading not in sections:
        raise ValueError(f"bench/results/{folder}/report.md has no section '{heading}'")
    return "\n".join(_first_table(sections[heading]))


def _cells(row: str) -> list[str]:
    return [c.strip() for c in row.strip().strip("|").split("|")]


def final_medians(folder: str) -> str:
    """Median final regret (the value where no optimum is known) of every optimizer on every problem: the last
    checkpoint of each problem's fixed-budget table."""
    sections = _report(folder)
    problems = [h for h, text in sections.items() if "### Fixed budget" in text]
    finals: dict[str, dict[str, str]] = {}
    for name in problems:
        budget = sections[name].split("### Fixed budget", 1)[1]
        header, _, *rows = _first_table(budget)
        last = len(_cells(header)) - 2  # the column before "stopped by"
        for row in rows:
            cells = _cells(row)
            finals.setdefault(cells[0], {})[name] = cells[last].split(" [")[0]
    lines = ["| optimizer | " + " | ".join(problems) + " |", "|---" * (len(problems) + 1) + "|"]
    lines += [f"| {opt} | " + " | ".join(v.get(p, "–") for p in problems) + " |" for opt, v in finals.items()]
    return "\n".join(lines)


TABLES = {
    "ablation-final": lambda: final_medians("ablation"),
    "ablation-ert": lambda: _verbatim("ablation", "evopress's cost to target divided by evopress-ref's"),
    "suite-final": lambda: final_medians("suite"),
    "suite-best-other": lambda: _verbatim(
        "suite", "Median final regret: evopress beside the best other optimizer (dp included)"),
    "suite-ert-ref": lambda: _verbatim("suite", "evopress's cost to target divided by evopress-ref's"),
    "suite-ert-best": lambda: _verbatim("suite", "EvoPress's cost to target divided by the best baseline's"),
    "suite-dp": lambda: _verbatim("suite", "dp beside EvoPress at the end of the budget"),
}
