"""``levelsearch report DIR``: tables and plots from a run's journal, also while it runs.

The journal is opened read-only, so a report can be made at any time without
disturbing the run that writes it. The report is printed, written as
``report.md`` and drawn as ``report.png`` (best value over evaluations and
over cost, cumulative failures, evaluations per fidelity).

With a multi-fidelity optimizer, values measured at different fidelities are
not comparable (a cheap low-fidelity estimate is noisier), so "best so far" is
given per fidelity.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .journal import Journal, JournalRecord

__all__ = ["RunReport", "load_report", "write_report", "add_parser"]

_FULL = "full"  # label of fidelity=None (the problem's default, full fidelity)


@dataclass
class RunReport:
    """What a journal says about a run (see :func:`load_report`).

    Attributes:
        path: the journal file.
        records: every journaled evaluation, in order.
        costs: the budget cost of each record (its fidelity; 1 without fidelity).
        meta: the journal's stored facts (identity, config, versions).
        summary: the run's ``summary.json`` when it has finished (else ``None``).
    """

    path: Path
    records: list[JournalRecord]
    costs: np.ndarray
    meta: dict[str, Any]
    summary: dict[str, Any] | None = None
    fidelities: list[str] = field(default_factory=list)

    @property
    def n_failures(self) -> int:
        return sum(not r.ok for r in self.records)

    @property
    def status(self) -> str:
        if self.summary is None:
            return "in progress (or killed; `levelsearch resume` continues it)"
        return f"stopped by {self.summary.get('stopped_by', '?')}"


def _label(fidelity: int | None) -> str:
    return _FULL if fidelity is None else str(fidelity)


def load_report(target: str | Path) -> RunReport:
    """Read a run directory (or a journal file) read-only.

    Raises:
        FileNotFoundError: no journal there.
        ValueError: the file is not a levelsearch journal.
    """
    target = Path(target)
    path = target / "journal.db" if target.is_dir() else target
    if not path.is_file():
        raise FileNotFoundError(f"no journal at {path}; give a run directory written by `levelsearch run`")
    with Journal(path, readonly=True) as jr:
        records = list(jr.records())
        meta = {k: jr.meta(k) for k in ("identity", "config", "levelsearch_version", "cost_model", "created")}
    model = meta.get("cost_model") or {}
    uses_fid = model.get("uses_fidelity", any(r.fidelity is not None for r in records))
    full = model.get("max_fidelity") or 1
    costs = np.array([(r.fidelity if r.fidelity is not None else full) if uses_fid else 1 for r in records], float)
    summary = None
    summary_path = path.parent / "summary.json"
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text())
        except ValueError:
            summary = None
    # a summary describes this journal only when the run finished at its end, and its best is a
    # journaled evaluation: summary.json is a report, the journal is what a report is made from
    if (
        not isinstance(summary, dict)
        or summary.get("stopped_by") == "interrupted"
        or summary.get("n_evaluations") != len(records)
        or not _best_is_journaled(summary, records)
    ):
        summary = None
    fids = sorted({r.fidelity for r in records}, key=lambda f: (f is None, f or 0))
    return RunReport(path, records, costs, meta, summary, [_label(f) for f in fids])


def _best_is_journaled(summary: dict[str, Any], records: list[JournalRecord]) -> bool:
    """Whether the summary's best (levels, value) is an evaluation the journal holds (a hand edit is not)."""
    value, levels = summary.get("best_value"), summary.get("best_levels")
    if value is None:  # no evaluation succeeded
        return not any(r.ok for r in records)
    try:
        key = (np.asarray(levels, dtype=np.int64).tobytes(), float(value))
    except (TypeError, ValueError, OverflowError):
        return False
    return any(r.ok and (r.levels.tobytes(), r.value) == key for r in records)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def fmt(x: Any) -> str:
        if isinstance(x, float):
            return "-" if not np.isfinite(x) else f"{x:.6g}"
        return str(x)

    cells = [[fmt(x) for x in row] for row in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in cells]
    return "\n".join(lines)


def best_so_far(rep: RunReport, fidelity: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(evaluation number, cost spent, best value)`` each time the best at ``fidelity`` improved."""
    n, c, v = [], [], []
    best = np.inf
    spent = np.cumsum(rep.costs)
    for k, r in enumerate(rep.records):
        if r.ok and _label(r.fidelity) == fidelity and r.value < best:
            best = r.value
            n.append(k + 1)
            c.append(float(spent[k]))
            v.append(best)
    return np.array(n, int), np.array(c), np.array(v)


def render(rep: RunReport) -> str:
    """The report as Markdown."""
    ident = rep.meta.get("identity") or {}
    problem = (ident.get("problem") or {}).get("name", "?")
    out = [f"# Run report: {rep.path.parent}", ""]
    recs = rep.records
    wall = (recs[-1].time - recs[0].time) if len(recs) > 1 else 0.0
    secs = np.array([r.seconds for r in recs]) if recs else np.zeros(0)
    overview = [
        ["journal", str(rep.path)],
        ["problem", problem],
        ["optimizer", ident.get("optimizer", "?")],
        ["seed", ident.get("seed", "?")],
        ["levelsearch", rep.meta.get("levelsearch_version") or "?"],
        ["status", rep.status],
        ["evaluations", len(recs)],
        ["failures", rep.n_failures],
        ["cost spent", float(rep.costs.sum())],
        ["oracle seconds (mean per evaluation)", float(secs.mean()) if secs.size else float("nan")],
        ["journal span (s)", float(wall)],
    ]
    if rep.summary is not None:
        overview.append(["best value (summary)", float(rep.summary["best_value"])])
        if rep.summary.get("optimum") is not None:
            overview.append(["known optimum", float(rep.summary["optimum"])])
    out += ["## Overview", "", _table(["", ""], overview), ""]

    rows = []
    for fid in rep.fidelities:
        sel = [k for k, r in enumerate(recs) if _label(r.fidelity) == fid]
        vals = np.array([recs[k].value for k in sel if recs[k].ok])
        rows.append(
            [
                fid,
                len(sel),
                sum(not recs[k].ok for k in sel),
                float(rep.costs[sel].sum()),
                float(vals.min()) if vals.size else float("nan"),
                float(np.median(vals)) if vals.size else float("nan"),
                float(np.mean([recs[k].seconds for k in sel])),
            ]
        )
    header = ["fidelity", "evaluations", "failures", "cost", "best", "median", "mean s"]
    out += ["## Evaluations per fidelity", "", _table(header, rows), ""]

    top = rep.fidelities[-1] if rep.fidelities else None
    if top is not None:
        n, c, v = best_so_far(rep, top)
        picks = sorted(set(np.linspace(0, len(n) - 1, min(len(n), 12)).astype(int))) if len(n) else []
        rows = [[int(n[i]), float(c[i]), float(v[i])] for i in picks]
        out += [f"## Best so far (fidelity {top})", "", _table(["evaluation", "cost", "best"], rows), ""]
        ok = [r for r in recs if r.ok and _label(r.fidelity) == top]
        if ok:
            best = min(ok, key=lambda r: r.value)
            out += [f"Best at fidelity {top}: value {best.value:.6g}, levels `{best.levels.tolist()}`", ""]

    workers: dict[str, list[JournalRecord]] = {}
    for r in recs:
        workers.setdefault(r.worker, []).append(r)
    rows = [
        [w, len(rs), sum(not r.ok for r in rs), float(np.mean([r.seconds for r in rs]))]
        for w, rs in sorted(workers.items())
    ]
    out += ["## Workers", "", _table(["worker", "evaluations", "failures", "mean s"], rows), ""]

    errors = Counter(r.error for r in recs if not r.ok)
    if errors:
        rows = [[n, (e or "").replace("|", "/")] for e, n in errors.most_common(8)]
        out += ["## Failures", "", _table(["count", "error"], rows), ""]
    return "\n".join(out)


def plot_report(rep: RunReport, path: str | Path) -> Path:
    """Draw the four panels of the report into a PNG."""
    from .plots import _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), dpi=100)
    (a_eval, a_cost), (a_fail, a_fid) = axes
    for fid in rep.fidelities:
        n, c, v = best_so_far(rep, fid)
        if len(n):
            total_n, total_c = len(rep.records), float(rep.costs.sum())
            a_eval.step(np.append(n, total_n), np.append(v, v[-1]), where="post", label=f"fidelity {fid}")
            a_cost.step(np.append(c, total_c), np.append(v, v[-1]), where="post", label=f"fidelity {fid}")
    if rep.summary is not None and rep.summary.get("optimum") is not None:
        for ax in (a_eval, a_cost):
            ax.axhline(float(rep.summary["optimum"]), ls="--", color="k", lw=1, label="optimum")
    a_eval.set(xlabel="evaluations", ylabel="best value so far", title="Best value over evaluations")
    a_cost.set(xlabel="cost (fidelity spent)", ylabel="best value so far", title="Best value over cost")
    fails = np.cumsum([not r.ok for r in rep.records])
    a_fail.plot(np.arange(1, len(fails) + 1), fails, color="tab:red")
    a_fail.set(xlabel="evaluations", ylabel="failed evaluations", title=f"Failures ({rep.n_failures})")
    a_fail.set_ylim(0, max(1, rep.n_failures) * 1.05)
    counts = Counter(_label(r.fidelity) for r in rep.records)
    a_fid.bar(rep.fidelities, [counts[f] for f in rep.fidelities], color="tab:blue")
    a_fid.set(xlabel="fidelity", ylabel="evaluations", title="Evaluations per fidelity")
    for ax in (a_eval, a_cost, a_fail, a_fid):
        ax.grid(alpha=0.3)
    for ax in (a_eval, a_cost):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out


def write_report(target: str | Path, out: str | Path | None = None, *, plot: bool = True) -> tuple[str, Path | None]:
    """Make the report of a run directory; returns ``(markdown, report.md path)``.

    Args:
        target: a run directory or a journal file.
        out: where to write ``report.md`` and ``report.png`` (default: next to the journal).
            Without ``out``, a run directory that cannot be written (a read-only mount) gets
            no files: the path returned is ``None`` and the markdown is all there is.

    Raises:
        FileNotFoundError: no journal at ``target``.
        ValueError: not a journal, or an ``out`` given is not writable.
    """
    rep = load_report(target)
    out_dir = Path(out) if out is not None else rep.path.parent
    text = render(rep)
    if out is None and not os.access(out_dir, os.W_OK):
        return text, None
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        md = out_dir / "report.md"
        md.write_text(text + ("\n\n![report](report.png)\n" if plot and rep.records else "\n"))
        if plot and rep.records:
            plot_report(rep, out_dir / "report.png")
    except OSError as exc:
        if out is None and exc.errno == errno.EROFS:
            return text, None
        raise ValueError(f"cannot write the report to {out_dir} ({exc.strerror}); use --out") from None
    return text, md


def _cmd_report(args: argparse.Namespace) -> int:
    text, md = write_report(args.dir, args.out, plot=not args.no_plot)
    print(text)
    if md is None:
        print("the run directory is read-only: the report is printed only (use --out DIR to write its files)")
    else:
        print(f"wrote {md}" + ("" if args.no_plot else f" and {md.with_name('report.png')}"))
    return 0


def add_parser(subparsers: Any) -> None:
    """Add ``levelsearch report`` to the CLI."""
    p = subparsers.add_parser("report", help="tables and plots from a run's journal (also while it runs)")
    p.add_argument("dir", help="run directory (or its journal.db)")
    p.add_argument("--out", default=None, help="where to write report.md and report.png (default: the run directory)")
    p.add_argument("--no-plot", action="store_true", help="tables only")
    p.set_defaults(func=_cmd_report)
