"""``levelsearch compress --method sparsity|quant|joint``: per-layer sparsities / bit-widths, compare, export.

Same flow and settings as the ``drop`` method of :mod:`levelsearch.adapters.compress`:

1. build the ``llm-sparsity`` (``--target`` = average sparsity, e.g. 0.5) or ``llm-quant``
   (``--target`` = average bits, e.g. 3 or 2.5) problem; its variant database is built on
   first use (resumable) and reused afterwards;
2. baselines on calibration data only: uniform, OWL (sparsity; best of its λ × M grid),
   DP on per-layer normalised output errors, best-of-16 random (when no uniform exists);
3. EvoPress from ``--start`` (default: the baseline with the lowest calibration KL) with the
   ``--schedule`` of the drop method, journaled in ``OUT/journal.db`` (resumable);
4. held-out perplexity and KL of dense and every method, ``OUT/results.json``,
   ``OUT/profile.png`` (per-layer sparsity / bit-width) and ``OUT/model`` (a Hugging Face
   directory: dense weights with zeros, or dequantized weights, plus
   ``levelsearch_compression.json`` with each layer's sparsity or bit-width), whose logits
   are checked against the search's model.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .codecs import WeightCodec

__all__ = ["run_levels", "run_sparsity", "run_quant", "run_joint", "plot_levels"]


def _run(codec: WeightCodec, cfg: dict[str, Any]) -> dict[str, Any]:
    from . import pipeline as step
    from .compress import schedule_options
    from .weightsearch import random_levels

    if not cfg.get("out"):
        raise ValueError("give an output directory with --out DIR (or out: in the config)")
    step.check_out(cfg["out"])  # before the model loads
    step.check_numbers(cfg)
    out = Path(cfg["out"])
    timings: dict[str, float] = {}
    t_all = t0 = time.perf_counter()
    problem = codec.make_problem(cfg)
    timings["load_and_database"] = time.perf_counter() - t0
    step.check_journal_problem(out, problem)
    step.lock_out(cfg, out)
    seed = int(cfg["seed"])
    fid = min(int(cfg["heuristic_tokens"]), problem.max_fidelity)
    base: dict[str, np.ndarray] = {}
    secs: dict[str, float] = {}
    extra: dict[str, dict[str, Any]] = {}
    t0 = time.perf_counter()
    uni = problem.uniform_levels()
    if uni is not None:
        base["uniform"] = uni
    t = time.perf_counter()
    for name, (levels, chosen) in codec.baselines(problem, fidelity=fid, seed=seed).items():
        base[name], extra[name] = levels, chosen
        secs[name] = time.perf_counter() - t
        t = time.perf_counter()
    base["dp"] = codec.dp_levels(problem, seed=seed)
    secs["dp"] = time.perf_counter() - t
    if uni is None:
        t = time.perf_counter()
        base["random"] = random_levels(problem, n=int(cfg.get("random_n", 16)), fidelity=fid, seed=seed)
        secs["random"] = time.perf_counter() - t
    names = list(base)
    cal, _ = problem.score([base[n] for n in names], "calibration")
    timings["baselines"] = time.perf_counter() - t0

    start = cfg["start"]
    if start in (None, "best-heuristic", "best-baseline"):
        start_name = names[int(np.argmin(cal))]
    elif start in base:
        start_name = str(start)
    elif start == "random":
        start_name = "random"
    else:
        raise ValueError(f"start must be best-baseline, random or one of {', '.join(names)}; got {start!r}")
    options = schedule_options(
        cfg["schedule"], problem.max_fidelity, cfg["offspring"], cfg["seq_len"], str(cfg["optimizer"])
    )
    options["start"] = "random" if start_name == "random" else base[start_name]
    t0 = time.perf_counter()
    result, opt = step.search(problem, cfg, options, start_name, out)
    timings["search"] = time.perf_counter() - t0
    best = np.asarray(result.best_levels, dtype=np.int64)

    t0 = time.perf_counter()
    cands = [None, best, *[base[n] for n in names]]
    report = problem.heldout_report(cands)
    timings["heldout"] = time.perf_counter() - t0
    methods: dict[str, Any] = {}
    for i, name in enumerate(["evopress", *names]):
        lv = cands[i + 1]
        assert lv is not None
        entry = {
            **report[i + 1],
            "levels": lv.tolist(),
            "profile": problem.profile(lv).tolist(),
            **codec.summary(problem, lv),
            "feasible": bool(problem.space.is_feasible(lv)),
        }
        if name == "evopress":
            entry.update(step.evopress_entry(result, opt, timings["search"], start_name))
        else:
            entry.update(
                calibration_kl=float(cal[names.index(name)]), seconds=secs.get(name, 0.0), **extra.get(name, {})
            )
        methods[name] = entry
    results: dict[str, Any] = {
        "model": cfg["model"],
        "method": codec.name,
        "target": float(cfg["target"]),
        "units": problem.unit_names,
        "database": {
            "dir": str(problem.db.root),
            "bytes": problem.db.size_bytes(),
            "spec": problem.spec,
            "build_seconds": problem.db.manifest["build_seconds"],
        },
        "schedule": {"name": cfg["schedule"], **step.jsonable(options)},
        "calibration_tokens": problem.calibration.n_tokens,
        "search_tokens": problem.max_fidelity,
        "heldout_tokens": problem.heldout.n_tokens,
        "dense": report[0],
        "methods": methods,
    }
    plot_levels(
        problem,
        {n: np.asarray(m["levels"]) for n, m in methods.items()},
        out / "profile.png",
        {n: m["heldout_ppl"] for n, m in methods.items()},
        label=codec.profile_label,
    )
    return step.export_and_write(codec, problem, best, results, timings, t_all, cfg)


def run_levels(cfg: dict[str, Any]) -> dict[str, Any]:
    """``--method NAME`` for a codec with a variant database (see the module docstring)."""
    from .codecs import get_weight_codec

    return _run(get_weight_codec(cfg["method"]), cfg)


def run_sparsity(cfg: dict[str, Any]) -> dict[str, Any]:
    """``--method sparsity`` whatever ``cfg["method"]`` says (see the module docstring)."""
    from .codecs import get_weight_codec

    return _run(get_weight_codec("sparsity"), cfg)


def run_quant(cfg: dict[str, Any]) -> dict[str, Any]:
    """``--method quant`` whatever ``cfg["method"]`` says (see the module docstring)."""
    from .codecs import get_weight_codec

    return _run(get_weight_codec("quant"), cfg)


def run_joint(cfg: dict[str, Any]) -> dict[str, Any]:
    """``--method joint``: ``--target`` is the memory budget in bits per weight (see :mod:`.joint`)."""
    from .codecs import get_weight_codec

    return _run(get_weight_codec("joint"), cfg)


def plot_levels(
    problem: Any,
    assignments: dict[str, np.ndarray],
    path: str | Path,
    ppl: dict[str, float] | None = None,
    *,
    label: str | None = None,
) -> Path:
    """Per-layer profile (sparsity, bits ...) of each method, one panel per projection type, against layer index.

    ``label`` names the profile's unit on the y axis (default: the problem's codec's :attr:`profile_label`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(dict.fromkeys(n.rsplit(".", 1)[-1] for n in problem.unit_names))
    fig, axes = plt.subplots(1, len(kinds), figsize=(2.6 * len(kinds), 3.0), sharey=True, squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        idx = [i for i, n in enumerate(problem.unit_names) if n.rsplit(".", 1)[-1] == kind]
        for name, lv in assignments.items():
            label = f"{name} ({ppl[name]:.1f})" if ppl and name in ppl else name
            ax.plot(problem.unit_layer[idx], problem.profile(lv)[idx], lw=1, label=label)
        ax.set_title(kind, fontsize=9)
        ax.set_xlabel("layer", fontsize=8)
    axes[0][0].set_ylabel(label if label is not None else problem.db.codec.profile_label)
    axes[0][-1].legend(fontsize=6)
    fig.suptitle("per-layer profile (held-out ppl)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
