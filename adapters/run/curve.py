"""Several targets in one ``levelsearch compress`` run: a size–quality curve (:func:`run_curve`).

    levelsearch compress --method quant --target 2.5,3,3.5,4 --out runs/curve
    levelsearch compress --method gguf --target-bytes 60MB,70MB,80MB --out runs/gguf-curve

One model load, one teacher pair, one variant database and one set of per-unit estimates serve every
target: the problem of the first target is moved to each next budget (:func:`retarget`: the same
object's model, teachers, database, estimates and per-sequence KL memory, with the level space of the
new budget), so a candidate met at two targets is measured once. Only a codec whose levels depend on
the target (sparsity: sparsities around it) gets a problem per target, from the same teachers.

Each target is run in ``OUT/target-<t>/`` (``OUT/bytes-<n>/`` for ``--target-bytes``) as a one-target run
is in ``OUT`` (:func:`~levelsearch.adapters.run.pipeline.run_target`: baselines, EvoPress, held-out
report, ``results.json``, ``profile.png``, export), its search started from the best baseline or the
previous target's result repaired to this budget, whichever has the lower calibration KL. Targets run
in increasing order, so a run stopped during target ``k`` and started again replays targets
``1..k-1`` from their journals (finished ones are read back, not run) and finishes ``k..`` exactly as
an uninterrupted run. At the top, ``OUT/curve.json`` (every method's held-out KL statistics and
perplexity per target, with sizes, the dense model, whether EvoPress's held-out KL is at most the best
baseline's, and the forward tokens of the whole run counted by the problem's token counter: each target's
and ``shared_forward_tokens``, the teacher's pass before the first) and ``OUT/curve.png``
(:func:`~levelsearch.adapters.run.plots.plot_curve`). What targets share costs nothing twice: a candidate
met again (a baseline of the same levels at another target, the repaired neighbour) reuses its remembered
per-sequence KL and its held-out report.
"""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from levelsearch import LevelSpace
from levelsearch.curve import check_budgets

from .pipeline import Teachers, check_journal_problem, check_settings, journal_results, lock_out, run, run_target, say
from .plots import plot_curve

__all__ = ["against_baselines", "curve_table", "is_curve", "moved", "retarget", "run_any", "run_curve", "targets_of"]


def _is_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) or (isinstance(value, str) and "," in value)


def is_curve(cfg: dict[str, Any]) -> bool:
    """Whether ``cfg`` asks for several targets (a list, or a comma string, of ``target`` or ``target_bytes``)."""
    return _is_list(cfg.get("target")) or _is_list(cfg.get("target_bytes"))


def _items(value: Any) -> list[Any]:
    if isinstance(value, str):
        return [x.strip() for x in value.split(",")]
    return list(value)


def targets_of(codec: Any, cfg: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(sub-directory name, one-target settings)`` per target, in order, each checked as a one-target run's.

    Raises:
        ValueError: one line naming the bad value: an empty list, a value that is not a number (or size),
            unsorted or repeated values, or one out of the codec's range.
    """

    by_bytes = _is_list(cfg.get("target_bytes"))
    key, option = ("target_bytes", "--target-bytes") if by_bytes else ("target", "--target")
    raw = _items(cfg[key])
    if not raw or raw == [""]:
        raise ValueError(f"{option} is empty; give one or more values separated by commas")
    out: list[tuple[str, dict[str, Any]]] = []
    values: list[float] = []
    for item in raw:
        one = {**cfg, key: item}
        if by_bytes:
            one["target_bytes"] = _bytes_of(codec, one, item, option)
            values.append(float(one["target_bytes"]))
            name = f"bytes-{one['target_bytes']}"
        else:
            try:
                one["target"] = float(item)
            except (TypeError, ValueError):
                raise ValueError(f"{option}: {item!r} is not a number") from None
            values.append(one["target"])
            name = f"target-{one['target']:g}"
        out.append((name, one))
    check_budgets(values, option)  # empty, unsorted, repeated, not finite: one line naming the value
    for _name, one in out:
        check_settings(one)
        codec.check_settings(one)  # out of the codec's range: its own one line, naming the value
    return out


def _bytes_of(codec: Any, one: dict[str, Any], item: Any, option: str) -> int:
    """A ``--target-bytes`` item as the codec reads it (a size with a unit), a whole number of bytes."""
    budget = getattr(codec, "budget", None)
    if budget is None:
        raise ValueError(f"--method {codec.name} does not take {option}")
    try:
        return int(budget(one)["target_bytes"])
    except ValueError as exc:
        raise ValueError(f"{option}: {item!r}: {exc}") from None


def retarget(problem: Any, codec: Any, cfg: dict[str, Any]) -> Any:
    """``problem`` moved to the target of ``cfg``: a shallow copy sharing the model, teachers, database,
    estimates and per-sequence KL memory, with the new budget's level space (:func:`moved`); or, for a codec
    whose levels depend on the target, a new problem of ``cfg`` handed the same teachers.

    Raises:
        ValueError: the budget is out of reach (the level space names the reachable range).
    """
    new = moved(problem, codec, cfg)
    if new is not None:
        return new
    other = codec.make_problem(cfg)
    if getattr(other, "content", None) == getattr(problem, "content", None):  # same weights and tokens
        for which in ("calibration", "heldout"):
            if problem.has_teacher(which):
                other.use_teacher(which, problem.teacher(which))
    return other


def moved(problem: Any, codec: Any, cfg: dict[str, Any]) -> Any | None:
    """``problem`` with the level space of ``cfg``'s budget (a shallow copy), or ``None`` when its levels would
    mean something else at that target (another variant database); ``ValueError`` for a budget out of reach."""

    if hasattr(problem, "level_bytes"):  # each level's cost is its tensor's bytes (gguf)
        new = copy.copy(problem)
        b = codec.budget(cfg)
        numel = float(problem.numel.sum())
        opts = {k: v for k, v in problem.budget_options.items() if k != "target_bytes"}
        if "target_bytes" in b:
            total = float(b["target_bytes"])
            new.target_bytes, new.target = int(b["target_bytes"]), 8.0 * total / numel
            opts["target_bytes"] = new.target_bytes
        else:
            new.target_bytes, new.target = None, float(b["target"])
            total = new.target * numel / 8.0
        new.budget_options = opts
        space_for = getattr(problem, "space_for", None)  # tied as the problem's (a mixture's expert tensors)
        if callable(space_for):
            new.space = space_for(total)
        else:
            costs = problem.level_bytes
            new.space = LevelSpace([len(c) for c in costs], costs=costs, total=total, tol=problem.tol * total)
        return new
    if hasattr(problem, "spec") and hasattr(problem, "costs") and hasattr(codec, "make_space"):
        target = float(codec.check_target(cfg))
        opts = {k: problem.spec[k] for k in getattr(codec, "default_spec", {}) if k in problem.spec}
        if codec.make_spec(problem.model, target, **opts) == problem.spec:  # the same levels: share all
            new = copy.copy(problem)
            new.target = target
            space = codec.make_space(problem.costs, problem.numel, target, problem.budget_options)
            tie = getattr(problem, "_tie", None)  # units that share a variant keep one level (when the problem ties)
            new.space = tie(space) if callable(tie) else space
            return new
    return None


def _finished(sub: Path) -> dict[str, Any] | None:
    """The recorded results of a target that ran to its end (journal results and a final ``results.json``)."""

    if not (sub / "journal.db").is_file() or not (sub / "results.json").is_file():
        return None
    try:
        report = json.loads((sub / "results.json").read_text())
        res = journal_results(sub)
    except (ValueError, OSError):
        return None
    if "timings" not in report or "failed" in report.get("export", {}):
        return None
    return res


def run_any(codec: Any, cfg: dict[str, Any]) -> dict[str, Any]:
    """``levelsearch compress``'s run: :func:`run_curve` for several targets, else the one-target
    :func:`~levelsearch.adapters.run.pipeline.run`."""

    return run_curve(codec, cfg) if is_curve(cfg) else run(codec, cfg)


def run_curve(codec: Any, cfg: dict[str, Any]) -> dict[str, Any]:
    """Run every target of ``cfg`` (see the module docstring); returns ``curve.json``'s content."""

    targets = targets_of(codec, cfg)
    out = Path(cfg["out"])
    t_all = t0 = time.perf_counter()
    first = codec.make_problem(targets[0][1])
    load = time.perf_counter() - t0
    say(cfg, f"loaded {cfg['model']} in {load:.1f} s; {len(targets)} targets")
    check_journal_problem(out / targets[0][0], first)
    for name, one in targets[1:]:
        p = moved(first, codec, one)  # every budget checked before anything is written
        if p is not None:
            check_journal_problem(out / name, p)
    lock_out(cfg, out)
    cache = out / "cache"
    cache.mkdir(exist_ok=True)
    tag = {"problem": first.identity_hash()}
    teachers = Teachers.prepare(first, cache, tag)
    shared = _shared_tokens(cache, int(first.n_forward_tokens))  # the teacher's pass, before any target
    points: list[dict[str, Any]] = []
    prev: tuple[str, Any] | None = None
    problem = first
    for k, (name, one) in enumerate(targets):
        sub = out / name
        if k:
            problem = retarget(problem, codec, one)  # from the previous one: its estimates and memory
        res = _finished(sub)
        if res is None:
            sub.mkdir(exist_ok=True)
            say(cfg, f"target {k + 1}/{len(targets)}: {name}")
            timings = {"load": load if k == 0 else 0.0}
            run_cfg = {**one, "out": str(sub), "_curve": True}
            res = run_target(codec, problem, run_cfg, teachers, timings, time.perf_counter(), neighbour=prev)
        points.append(_point(name, one, res, problem))
        prev = (name, np.asarray(res["methods"]["evopress"]["levels"], dtype=np.int64))
    curve = _curve_json(codec, cfg, first, targets, points, time.perf_counter() - t_all, shared)
    (out / "curve.json").write_text(json.dumps(curve, indent=1))

    plot_curve(curve, out / "curve.png")
    return curve


def _shared_tokens(cache: Path, spent: int) -> int:
    """Forward tokens the run spent before its first target (the calibration teacher's pass): ``spent``,
    kept in ``cache/shared-tokens.json`` so that a resumed run, which reads the teacher back, still counts them."""

    path = cache / "shared-tokens.json"
    if spent:
        path.write_text(json.dumps({"forward_tokens": spent}))
        return spent
    try:
        return int(json.loads(path.read_text())["forward_tokens"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _sizes(problem: Any, levels: Any) -> dict[str, float]:
    """What a point's size is: the budget's cost, and bits per weight and bytes of the searched weights when
    the codec's amounts are bits (weights only: a format's scales and metadata are not counted)."""

    lv = np.asarray(levels, dtype=np.int64)
    out: dict[str, float] = {"cost": float(problem.space.cost(lv))}
    numel = float(np.sum(problem.numel)) if hasattr(problem, "numel") else math.nan
    if hasattr(problem, "level_bytes"):
        out["bytes"] = out["cost"]
        out["bits_per_weight"] = 8.0 * out["cost"] / numel
    elif getattr(getattr(problem, "codec", None), "profile_label", "") in ("bits", "bits per weight"):
        out["bits_per_weight"] = float(problem.average(lv))
        out["bytes"] = out["bits_per_weight"] * numel / 8.0
    return out


#: what curve.json keeps of each method's entry
_KEEP = (
    "heldout_ppl",
    "heldout_kl",
    "heldout_kl_median",
    "heldout_kl_p99",
    "heldout_kl_p99_9",
    "heldout_top1",
    "calibration_kl",
    "feasible",
    "start",
    "generations",
    "evaluations",
    "tokens",
    "stop_reason",
    "acceptance",
)


def _point(name: str, one: dict[str, Any], res: dict[str, Any], problem: Any) -> dict[str, Any]:
    methods = {}
    for m, entry in res["methods"].items():
        methods[m] = {k: entry[k] for k in _KEEP if k in entry}
        methods[m].update(_sizes(problem, entry["levels"]))
    budget = "target_bytes" if isinstance(one.get("target_bytes"), int) else "target"
    return {
        "name": name,
        budget: one[budget],
        "target": float(res.get("target", one.get("target") or math.nan)),
        "forward_tokens": int(res.get("forward_tokens", 0)),
        "dense": res.get("dense", {}),
        "methods": methods,
        **against_baselines(methods),
    }


def against_baselines(methods: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """EvoPress against the best feasible baseline on the held-out set: ``best_baseline`` (its name, or ``None``),
    ``best_baseline_kl`` and ``evopress_at_most_best_baseline`` (EvoPress's held-out mean KL is at most its)."""

    ms = methods
    base = [n for n in ms if n != "evopress" and ms[n].get("feasible", True) and "heldout_kl" in ms[n]]
    if not base or "evopress" not in ms:
        return {"best_baseline": None, "best_baseline_kl": None, "evopress_at_most_best_baseline": None}
    best = min(base, key=lambda n: ms[n]["heldout_kl"])
    return {
        "best_baseline": best,
        "best_baseline_kl": float(ms[best]["heldout_kl"]),
        "evopress_at_most_best_baseline": bool(ms["evopress"]["heldout_kl"] <= ms[best]["heldout_kl"]),
    }


def _curve_json(
    codec: Any,
    cfg: dict[str, Any],
    problem: Any,
    targets: list[Any],
    points: list[dict[str, Any]],
    seconds: float,
    shared: int = 0,
) -> dict[str, Any]:

    dense = dict(points[0]["dense"]) if points else {}
    by_bytes = isinstance(targets[0][1].get("target_bytes"), int)
    if hasattr(problem, "numel"):
        bits = 8 * int(next(problem.model.parameters()).element_size())
        dense.update({"bits_per_weight": float(bits), "bytes": bits * float(np.sum(problem.numel)) / 8.0})
    return {
        "model": cfg["model"],
        "method": codec.name,
        "targets": [t[1]["target_bytes"] if by_bytes else t[1]["target"] for t in targets],
        "in": "bytes" if by_bytes else "target",
        "generations": int(cfg["generations"]),
        "dense": dense,
        "points": points,
        "shared_forward_tokens": int(shared),
        "forward_tokens": int(shared + sum(p["forward_tokens"] for p in points)),
        "evopress_at_most_best_baseline": all(p["evopress_at_most_best_baseline"] is not False for p in points),
        "seconds": seconds,
    }


def curve_table(curve: dict[str, Any]) -> str:
    """The printed summary of a curve: per target, EvoPress's and the best baseline's held-out figures."""
    rows = [
        f"{'target':>12} {'method':>14} {'size':>10} {'ppl':>8} {'KL':>8} {'KL p99':>8} {'top-1':>7}",
    ]
    for p in curve["points"]:
        ms = p["methods"]
        best = against_baselines(ms)["best_baseline"]
        for n in ["evopress", *([best] if best else [])]:
            m = ms[n]
            size = f"{m['bits_per_weight']:.3f}b" if "bits_per_weight" in m else f"{m['cost']:.4g}"
            rows.append(
                f"{p['name']:>12} {n:>14} {size:>10} {m['heldout_ppl']:8.2f} {m['heldout_kl']:8.4f} "
                f"{m.get('heldout_kl_p99', math.nan):8.4f} {100 * m.get('heldout_top1', math.nan):6.2f}%"
            )
    d = curve.get("dense", {})
    rows.append(f"dense: held-out ppl {d.get('heldout_ppl', math.nan):.2f}; forward tokens {curve['forward_tokens']:,}")
    return "\n".join(rows)
