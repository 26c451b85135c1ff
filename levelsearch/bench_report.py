"""Tables, plots and IOHprofiler files for :mod:`levelsearch.bench` (see its docstring for the layout)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["write_report", "regret_at", "ert"]

_EVOPRESS = "evopress"
_REF = "evopress-ref"


def _measure(runs: list[dict[str, Any]], optimum: float | None) -> None:
    """Add ``xs`` (cost) and ``ys`` (regret, or value without optimum) to every run."""
    for r in runs:
        pts = r.get("curve") or []
        r["xs"] = np.array([p[1] for p in pts], dtype=float)
        ys = np.array([p[2] for p in pts], dtype=float)
        r["ys"] = ys - optimum if optimum is not None else ys


def regret_at(xs: np.ndarray, ys: np.ndarray, budget: float) -> float:
    """The measure of the last recommendation made within ``budget`` (inf before the first)."""
    k = int(np.searchsorted(xs, budget + 1e-9, side="right")) - 1
    return float(ys[k]) if k >= 0 else math.inf


def _hit_cost(xs: np.ndarray, ys: np.ndarray, target: float) -> float:
    idx = np.flatnonzero(ys <= target)
    return float(xs[idx[0]]) if idx.size else math.inf


def ert(runs: Sequence[dict[str, Any]], target: float) -> tuple[float, float]:
    """Expected running time to ``target``: (cost of all runs until hit or end) / successes; and the success rate."""
    spent, hits = 0.0, 0
    for r in runs:
        c = _hit_cost(r["xs"], r["ys"], target)
        if math.isfinite(c):
            spent, hits = spent + c, hits + 1
        else:
            spent += float(r["xs"][-1]) if r["xs"].size else 0.0
    return (spent / hits if hits else math.inf), hits / max(1, len(runs))


def _fmt(x: float) -> str:
    if not math.isfinite(x):
        return "inf" if x > 0 else "-inf" if x < 0 else "nan"
    return f"{x:.3g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def _stats(vals: Sequence[float]) -> str:
    v = np.asarray(vals, dtype=float)
    if not v.size:
        return "–"
    q1, med, q3 = np.percentile(v, [25, 50, 75]) if np.all(np.isfinite(v)) else (np.nan, np.median(v), np.nan)
    return f"{_fmt(med)} [{_fmt(q1)}, {_fmt(q3)}]"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grid(runs: list[dict[str, Any]], total: float) -> np.ndarray:
    return np.linspace(0.0, total, 200)[1:]


def _plot_convergence(path: Path, by_opt: dict[str, list[dict[str, Any]]], total: float, title: str, log: bool) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = _grid([], total)
    for label, runs in by_opt.items():
        curves = np.array([[regret_at(r["xs"], r["ys"], x) for x in xs] for r in runs if r["xs"].size])
        if not curves.size:
            continue
        with np.errstate(invalid="ignore"):
            q1, med, q3 = np.percentile(curves, [25, 50, 75], axis=0)
        (line,) = ax.plot(xs, med, label=label, lw=2.0 if label == _EVOPRESS else 1.0)
        ax.fill_between(xs, q1, q3, alpha=0.15, color=line.get_color())
    if log:
        ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_xlabel("cost (evaluations or fidelity units)")
    ax.set_ylabel("regret of the recommendation" if log else "value of the recommendation")
    ax.set_title(title)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _targets(optimum: float | None, runs: list[dict[str, Any]]) -> np.ndarray:
    finals = [float(r["ys"][-1]) for r in runs if r["ys"].size and math.isfinite(r["ys"][-1])]
    starts = [float(r["ys"][0]) for r in runs if r["ys"].size and math.isfinite(r["ys"][0])]
    if optimum is not None:
        hi = max(max(starts, default=1.0), 1e-8)
        return np.geomspace(hi, max(hi * 1e-4, 1e-9), 12)
    lo, hi = min(finals, default=0.0), max(starts, default=1.0)
    return np.linspace(hi, lo, 12)


def _plot_ecdf(
    path: Path, by_opt: dict[str, list[dict[str, Any]]], total: float, targets: np.ndarray, title: str
) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = _grid([], total)
    for label, runs in by_opt.items():
        hits = [_hit_cost(r["xs"], r["ys"], t) for r in runs for t in targets]
        frac = [np.mean([h <= x for h in hits]) if hits else 0.0 for x in xs]
        ax.step(xs, frac, where="post", label=label, lw=2.0 if label == _EVOPRESS else 1.0)
    ax.set_ylim(0, 1)
    ax.set_xlabel("cost (evaluations or fidelity units)")
    ax.set_ylabel(f"fraction of (run, target) pairs hit, {len(targets)} targets")
    ax.set_title(title)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _write_ioh(out: Path, meta: dict[str, Any], runs: list[dict[str, Any]]) -> None:
    """IOHprofiler's legacy layout: per algorithm, ``IOHprofiler_f<id>_<name>.info`` + ``data_f<id>_<name>/*.dat``."""
    labels = [o["label"] for o in meta["config"]["optimizers"]]
    for fid, pr in enumerate(meta["problems"], start=1):
        name, dim = pr["label"], pr["n_units"]
        for label in labels:
            mine = sorted(
                (r for r in runs if r["problem"] == name and r["optimizer"] == label and "values" in r),
                key=lambda r: r["seed"],
            )
            if not mine:
                continue
            folder = out / "ioh" / label
            data = folder / f"data_f{fid}_{name}"
            data.mkdir(parents=True, exist_ok=True)
            dat = [f"IOHprofiler_f{fid}_DIM{dim}.dat"]
            lines, entries = [], []
            for r in mine:
                lines.append('"function evaluation" "current f(x)" "best-so-far f(x)"')
                best = math.inf
                for i, v in enumerate(r["values"], start=1):
                    best = min(best, v) if math.isfinite(v) else best
                    lines.append(f"{i} {v:.10g} {best:.10g}")
                entries.append(f"{r['seed'] + 1}:{len(r['values'])}|{best:.10g}")
            (data / dat[0]).write_text("\n".join(lines) + "\n")
            info = (
                f'suite = "levelsearch", funcId = {fid}, funcName = "{name}", DIM = {dim}, '
                f'maximization = "F", algId = "{label}", algInfo = "levelsearch bench"\n%\n'
                f"data_f{fid}_{name}/{dat[0]}, " + ", ".join(entries) + "\n"
            )
            (folder / f"IOHprofiler_f{fid}_{name}.info").write_text(info)


def _ref_and_finals(
    labels: list[str],
    problems: list[str],
    ref_erts: list[tuple[str, float, float]],
    ends: dict[tuple[str, str], list[float]],
) -> list[str]:
    """evopress's ERT over evopress-ref's, and its median final regret beside the best other optimizer's."""
    md: list[str] = []
    if _REF in labels and _EVOPRESS in labels:
        md += [
            "",
            "## evopress's cost to target divided by evopress-ref's",
            "",
            "| problem | evopress ERT | evopress-ref ERT | ratio (<= 0.5: half the evaluations or fewer) |",
            "|---|---|---|---|",
        ]
        for name, ev, rf in ref_erts:
            if not math.isfinite(rf):
                note = "evopress-ref never reached the target" + ("" if not math.isfinite(ev) else "; evopress did")
            else:
                note = _fmt(ev / rf) if math.isfinite(ev) else "inf: evopress never reached it"
            md.append(f"| {name} | {_fmt(ev)} | {_fmt(rf)} | {note} |")
    if _EVOPRESS in labels:
        md += [
            "",
            "## Median final regret: evopress beside the best other optimizer (dp included)",
            "",
            "| problem | evopress | best other | its median | evopress <= best other |",
            "|---|---|---|---|---|",
        ]
        wins = 0
        for name in problems:
            mine = ends.get((name, _EVOPRESS))
            others = {
                lb: float(np.median(v))
                for (pn, lb), v in ends.items()
                if pn == name and lb not in (_EVOPRESS, _REF) and v
            }
            if not mine or not others:
                continue
            best = min(others, key=lambda k: others[k])
            med = float(np.median(mine))
            ok = med <= others[best] + 1e-9 * max(1.0, abs(others[best]))
            wins += ok
            md.append(f"| {name} | {_stats(mine)} | {best} | {_fmt(others[best])} | {'yes' if ok else 'no'} |")
        md += ["", f"evopress's median final regret is at most the best other optimizer's on {wins} problems."]
    return md


def _wall_table(labels: list[str], problems: list[str], walls: dict[tuple[str, str], list[float]]) -> list[str]:
    """Median wall seconds per run (apart from the comparisons: machines differ)."""
    md = [
        "",
        "## Wall time per run",
        "",
        "Median seconds per run on this machine (not a measure of sample efficiency: these machines differ "
        "2-3x from day to day and are shared).",
        "",
        "| optimizer | " + " | ".join(problems) + " |",
        "|---" * (len(problems) + 1) + "|",
    ]
    for lb in labels:
        cells = [_fmt(float(np.median(walls[(p, lb)]))) if walls.get((p, lb)) else "–" for p in problems]
        md.append(f"| {lb} | " + " | ".join(cells) + " |")
    return md


@dataclass
class _Tally:
    """What the per-problem sections gather for the tables that follow them, keyed by (problem, optimizer)."""

    walls: dict[tuple[str, str], list[float]] = field(default_factory=dict)  # wall seconds per run
    ends: dict[tuple[str, str], list[float]] = field(default_factory=dict)  # final regret per run
    ref_erts: list[tuple[str, float, float]] = field(default_factory=list)  # problem, evopress's ERT, ref's
    summary: list[tuple[str, float, str | None, float]] = field(default_factory=list)  # ..., best baseline, its ERT
    finals: list[tuple[str, list[float], list[float], bool]] = field(default_factory=list)  # dp beside evopress


def write_report(out: Path, meta: dict[str, Any], runs: list[dict[str, Any]]) -> Path:
    """Write plots, IOHprofiler files and ``report.md``; returns the report's path."""
    _write_ioh(out, meta, runs)
    labels = [o["label"] for o in meta["config"]["optimizers"]]
    names = [pr["label"] for pr in meta["problems"]]
    md = _header(meta)
    tally = _Tally()
    for pr in meta["problems"]:
        md += _problem_section(out, pr, runs, labels, meta["config"]["checkpoints"], tally)
    md += _baseline_table(tally.summary)
    md += _dp_table(tally.finals)
    md += _ref_and_finals(labels, names, tally.ref_erts, tally.ends)
    md += _wall_table(labels, names, tally.walls)
    md += _notes_list(runs)
    errors = [r for r in runs if "error" in r]
    if errors:
        md += ["", "## Failed runs", ""] + [
            f"- {r['optimizer']} on {r['problem']} seed {r['seed']}: {r['error']}" for r in errors
        ]
    path = out / "report.md"
    path.write_text("\n".join(md) + "\n")
    return path


def _header(meta: dict[str, Any]) -> list[str]:
    """Title, machine, partial-grid warning and how to read the cells."""
    cfg = meta["config"]
    md = [f"# Benchmark: {cfg['name']}", ""]
    md += [
        f"Machine: {meta['machine']}; {meta['workers']} worker processes; {meta['date']}; "
        f"grid wall time {meta['wall_seconds'] / 60:.1f} min.",
        "",
    ]
    if meta.get("missing_runs"):
        md += [
            f"**Partial report: {meta['missing_runs']} runs of the grid had not finished** (run the same command "
            "again without --report-only to complete it; finished runs are kept).",
            "",
        ]
    md += [
        f"Seeds: {cfg['seeds']}. Wall-time cap per run: {cfg.get('max_seconds') or 'none'} s. "
        "Cells: median [25th, 75th percentile] over seeds of the recommendation's regret "
        "(noise-free value minus the optimum; the value itself where no optimum is known).",
        "",
    ]
    return md


def _problem_section(
    out: Path,
    pr: dict[str, Any],
    runs: list[dict[str, Any]],
    labels: list[str],
    checkpoints: list[float],
    tally: _Tally,
) -> list[str]:
    """One problem: its fixed-budget and fixed-target tables and its plots (written beside the report)."""
    name, opt = pr["label"], pr["optimum"]
    mine = [r for r in runs if r["problem"] == name and "error" not in r]
    _measure(mine, opt)
    by_opt = {lb: [r for r in mine if r["optimizer"] == lb] for lb in labels}
    budget = pr["budget"]
    unit = "fidelity units" if pr["uses_fidelity"] and "max_cost" in budget else "evaluations"
    total = float(budget["max_cost"] if unit == "fidelity units" else budget["max_evaluations"])
    best_found = min((float(r["ys"].min()) for r in mine if r["ys"].size), default=math.nan)
    rel = pr["target_relative"]
    if opt is not None:
        target = rel * max(abs(opt), 1e-12)
        tdesc = f"regret <= {_fmt(target)} ({rel:g} x |optimum|)"
    else:
        target = best_found + rel * max(abs(best_found), 1e-12)
        tdesc = f"value <= {_fmt(target)} (best value found by any run + {rel:g} x its magnitude)"
    md = [
        f"## {name}",
        "",
        f"Problem: `{pr['config']}`; budget {_fmt(total)} {unit}; optimum "
        f"{_fmt(opt) if opt is not None else 'unknown'}; target: {tdesc}.",
        "",
    ]
    md += _fixed_budget(name, by_opt, [c * total for c in checkpoints], tally)
    md += _fixed_target(name, by_opt, target, unit, tally)
    if "dp" in by_opt and _EVOPRESS in by_opt:
        last = {lb: [float(r["ys"][-1]) for r in by_opt[lb] if r["ys"].size] for lb in ("dp", _EVOPRESS)}
        tally.finals.append((name, last["dp"], last[_EVOPRESS], opt is not None))
    log = opt is not None
    _plot_convergence(out / f"convergence_{name}.png", by_opt, total, f"{name}: median, IQR band", log)
    _plot_ecdf(out / f"ecdf_{name}.png", by_opt, total, _targets(opt, mine), f"{name}: ECDF over targets")
    md += ["", f"![convergence](convergence_{name}.png) ![ecdf](ecdf_{name}.png)", ""]
    return md


def _fixed_budget(name: str, by_opt: dict[str, list[dict[str, Any]]], cps: list[float], tally: _Tally) -> list[str]:
    """The regret of each optimizer's recommendation at each checkpoint of the budget, and what stopped it."""
    md = [
        "### Fixed budget",
        "",
        "| optimizer | " + " | ".join(f"@{_fmt(c)}" for c in cps) + " | stopped by |",
        "|---" * (len(cps) + 2) + "|",
    ]
    for lb, mine in by_opt.items():
        rs = [r for r in mine if r["xs"].size]
        cells = [_stats([regret_at(r["xs"], r["ys"], c) for r in rs]) for c in cps]
        tally.walls[(name, lb)] = [float(r["wall_seconds"]) for r in mine]
        stops = ", ".join(sorted({r["stopped_by"] for r in mine})) or "failed"
        md.append(f"| {lb} | " + " | ".join(cells) + f" | {stops} |")
        if rs:
            tally.ends[(name, lb)] = [float(r["ys"][-1]) for r in rs]
    return md


def _fixed_target(
    name: str, by_opt: dict[str, list[dict[str, Any]]], target: float, unit: str, tally: _Tally
) -> list[str]:
    """Each optimizer's expected cost to the target (ERT), its success rate, and both ERT ratios."""
    md = [
        "",
        "### Fixed target",
        "",
        f"ERT in {unit} to reach the target (total spent by all runs until "
        "they hit it or ended, divided by the hits), and the success rate.",
        "",
        "| optimizer | ERT | success | ERT / evopress's | ERT / evopress-ref's |",
        "|---|---|---|---|---|",
    ]
    erts = {lb: ert(mine, target) for lb, mine in by_opt.items() if mine}
    ev = erts.get(_EVOPRESS, (math.inf, 0.0))[0]
    rf = erts.get(_REF, (math.inf, 0.0))[0]
    for lb, (e, s) in erts.items():
        ratio = e / ev if math.isfinite(ev) and ev > 0 else math.nan
        ratio_ref = e / rf if math.isfinite(rf) and rf > 0 else math.nan
        md.append(f"| {lb} | {_fmt(e)} | {s:.0%} | {_fmt(ratio)} | {_fmt(ratio_ref)} |")
    tally.ref_erts.append((name, ev, rf))
    base = {lb: v for lb, v in erts.items() if lb != _EVOPRESS and not lb.startswith(_EVOPRESS)}
    best_lb = min(base, key=lambda k: base[k][0]) if base else None
    tally.summary.append((name, ev, best_lb, base[best_lb][0] if best_lb else math.inf))
    return md


def _baseline_table(summary: list[tuple[str, float, str | None, float]]) -> list[str]:
    """EvoPress's ERT over the best baseline's, per problem."""
    md = [
        "## EvoPress's cost to target divided by the best baseline's",
        "",
        "| problem | EvoPress ERT | best baseline | its ERT | ratio (< 1: EvoPress cheaper) |",
        "|---|---|---|---|---|",
    ]
    for name, ev, best_lb, be in summary:
        if not math.isfinite(be):
            best_lb, note = "none reached the target", "EvoPress only" if math.isfinite(ev) else "nobody reached it"
        elif not math.isfinite(ev):
            note = "inf: EvoPress never reached the target"
        else:
            ratio = ev / be
            note = f"{_fmt(ratio)}" + ("" if ratio < 1 else f": {best_lb} is cheaper")
        md.append(f"| {name} | {_fmt(ev)} | {best_lb} | {_fmt(be)} | {note} |")
    return md


def _dp_table(finals: list[tuple[str, list[float], list[float], bool]]) -> list[str]:
    """dp's and EvoPress's median final regret, where both ran."""
    if not finals:
        return []
    md = [
        "",
        "## dp beside EvoPress at the end of the budget",
        "",
        "Median final regret (value where no optimum is known) over seeds.",
        "",
        "| problem | dp | EvoPress | dp exact (all seeds) | EvoPress better than dp |",
        "|---|---|---|---|---|",
    ]
    for name, dp_f, ev_f, has_opt in finals:
        exact = ("yes" if max(dp_f) <= 1e-6 else "no") if has_opt and dp_f else "–"
        better = "yes" if dp_f and ev_f and np.median(ev_f) < np.median(dp_f) else "no"
        md.append(f"| {name} | {_stats(dp_f)} | {_stats(ev_f)} | {exact} | {better} |")
    return md


def _notes_list(runs: list[dict[str, Any]]) -> list[str]:
    """Fallbacks the runs took (``Result.notes``), each once with the runs that took it."""
    seen: dict[str, list[str]] = {}
    for r in runs:
        for note in r.get("notes") or ():
            seen.setdefault(note, []).append(f"{r['optimizer']} on {r['problem']} seed {r['seed']}")
    if not seen:
        return []
    return ["", "## Notes", ""] + [f"- {note} ({'; '.join(where)})" for note, where in seen.items()]
