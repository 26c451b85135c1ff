"""The per-unit profile plot of compression assignments, for every codec, and the size–quality curve of a run of
several targets (matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["plot_curve", "plot_profile"]


def plot_profile(
    problem: Any,
    assignments: Mapping[str, np.ndarray],
    path: str | Path,
    ppl: Mapping[str, float] | None = None,
    *,
    label: str | None = None,
) -> Path:
    """Each method's per-unit profile, one panel per unit type, a row per method, a column per layer.

    A cell's shade is the unit's profile value (``problem.profile(levels)``: dropped or kept, sparsity,
    bits per weight, fraction kept ...), named ``label`` on the colour bar (default: the problem's
    codec's :attr:`~levelsearch.adapters.codecs.Codec.profile_label`). ``problem`` needs ``profile``,
    ``unit_type(unit)``, ``unit_layer`` and ``map.n_layers``; ``ppl`` adds held-out perplexities to the
    method names.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(assignments)
    n_units, n_layers = len(problem.unit_layer), problem.map.n_layers
    types = list(dict.fromkeys(problem.unit_type(u) for u in range(n_units)))
    grids = {t: np.full((len(names), n_layers), np.nan) for t in types}
    for r, name in enumerate(names):
        prof = problem.profile(np.asarray(assignments[name]))
        for u in range(n_units):
            grids[problem.unit_type(u)][r, int(problem.unit_layer[u])] = prof[u]
    values = np.concatenate([g[np.isfinite(g)] for g in grids.values()])
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    width = max(4.0, 0.12 * n_layers * len(types) + 2.5)
    fig, axes = plt.subplots(1, len(types), figsize=(width, 0.32 * len(names) + 1.6), sharey=True, squeeze=False)
    for ax, t in zip(axes[0], types):
        im = ax.imshow(grids[t], cmap="viridis", vmin=lo, vmax=hi if hi > lo else lo + 1, aspect="auto")
        ax.set_title(t, fontsize=9)
        ax.set_xlabel("layer", fontsize=8)
        ax.tick_params(labelsize=6)
    rows = [f"{n} ({ppl[n]:.1f})" if ppl and n in ppl else n for n in names]
    axes[0][0].set_yticks(range(len(names)))
    axes[0][0].set_yticklabels(rows, fontsize=7)
    cbar = fig.colorbar(im, ax=list(axes[0]), fraction=0.02, pad=0.01)
    cbar.set_label(label if label is not None else problem.codec.profile_label, fontsize=8)
    fig.suptitle("per-unit profile" + (" (held-out ppl)" if ppl else ""), fontsize=9, y=1.06)
    out = Path(path)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


def plot_curve(curve: Mapping[str, Any], path: str | Path) -> Path:
    """Held-out KL and perplexity against size: a row per measure, a column per size axis (bits per weight and
    bytes of the searched weights, when the codec's sizes are bits; else the budget's cost), a line per method
    (EvoPress and every baseline feasible at every target), the dense model's perplexity as a horizontal line (its
    KL is 0, off the log axis of KL)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = list(curve["points"])
    first = points[0]["methods"]["evopress"] if points else {}
    axes_x = [x for x in ("bits_per_weight", "bytes") if x in first] or ["cost"]
    names = [n for n in (points[0]["methods"] if points else {}) if all(n in p["methods"] for p in points)]
    fig, axes = plt.subplots(2, len(axes_x), figsize=(5.0 * len(axes_x), 6.4), squeeze=False)
    dense = curve.get("dense", {})
    for col, x in enumerate(axes_x):
        for row, (y, label) in enumerate((("heldout_kl", "held-out KL (nats/token)"), ("heldout_ppl", "perplexity"))):
            ax = axes[row][col]
            for n in names:
                pts = [
                    (p["methods"][n][x], p["methods"][n][y]) for p in points if p["methods"][n].get("feasible", True)
                ]
                if not pts:
                    continue
                xs, ys = zip(*sorted(pts))
                style = {"lw": 2.2, "color": "black", "zorder": 3} if n == "evopress" else {"lw": 1.0, "alpha": 0.8}
                ax.plot(xs, ys, marker="o", ms=3, label=n, **style)
            if y in dense and dense[y] > 0:  # the dense model's KL to itself is 0: off a log axis
                ax.axhline(dense[y], color="grey", ls="--", lw=1, label=f"dense ({dense[y]:.3g})")
            ax.set_xlabel(
                {"bits_per_weight": "bits per weight", "bytes": "bytes", "cost": "budget cost"}[x], fontsize=8
            )
            ax.set_ylabel(label, fontsize=8)
            ax.tick_params(labelsize=7)
            if y == "heldout_kl":
                ax.set_yscale("log")
    axes[1][0].legend(fontsize=6, ncol=2)
    fig.suptitle(f"{curve.get('model', '')} {curve.get('method', '')}: held-out quality against size", fontsize=9)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
