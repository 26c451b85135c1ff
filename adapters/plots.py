"""Per-layer profile plots of compression assignments (matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["plot_profile"]


def plot_profile(problem: Any, assignments: Mapping[str, np.ndarray], path: str | Path) -> Path:
    """Draw which attention / MLP sub-blocks each method drops, one row pair per method.

    ``problem`` needs ``map.n_layers`` and ``layer_keys(levels)`` (a :class:`DropProblem`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(assignments)
    n_layers = problem.map.n_layers
    grid = np.zeros((2 * len(names), n_layers))
    for r, name in enumerate(names):
        for layer, (a, m) in enumerate(problem.layer_keys(assignments[name])):
            grid[2 * r, layer] = a
            grid[2 * r + 1, layer] = m
    fig, ax = plt.subplots(figsize=(max(6.0, 0.3 * n_layers + 2.5), 0.5 * grid.shape[0] + 1.2))
    ax.imshow(grid, cmap="Greys", vmin=0, vmax=1.4, aspect="auto", interpolation="nearest")
    ax.set_yticks(range(grid.shape[0]))
    ax.set_yticklabels([f"{n} {t}" for n in names for t in ("attn", "mlp")], fontsize=8)
    ax.set_xticks(range(n_layers))
    ax.set_xticklabels([str(i) for i in range(n_layers)], fontsize=7)
    ax.set_xlabel("layer (dark = dropped)")
    for r in range(1, len(names)):
        ax.axhline(2 * r - 0.5, color="tab:red", linewidth=0.8)
    ax.set_title("dropped sub-blocks per method")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
