"""The per-unit profile plot of compression assignments, for every codec (matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["plot_profile"]


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
