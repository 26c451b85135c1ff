"""``levelsearch compress --method sparsity|quant|joint``: per-layer sparsities / bit-widths, compare, export.

The codecs with a variant database through the one pipeline (:func:`levelsearch.adapters.pipeline.run`),
with the settings of the ``drop`` method of :mod:`levelsearch.adapters.compress`:

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

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["run_levels", "run_sparsity", "run_quant", "run_joint", "plot_levels"]


def run_levels(cfg: dict[str, Any]) -> dict[str, Any]:
    """``--method NAME`` for a codec with a variant database (see the module docstring)."""
    from .codecs import get_weight_codec
    from .pipeline import run

    return run(get_weight_codec(cfg["method"]), cfg)


def run_sparsity(cfg: dict[str, Any]) -> dict[str, Any]:
    """``--method sparsity`` whatever ``cfg["method"]`` says (see the module docstring)."""
    from .codecs import get_weight_codec
    from .pipeline import run

    return run(get_weight_codec("sparsity"), cfg)


def run_quant(cfg: dict[str, Any]) -> dict[str, Any]:
    """``--method quant`` whatever ``cfg["method"]`` says (see the module docstring)."""
    from .codecs import get_weight_codec
    from .pipeline import run

    return run(get_weight_codec("quant"), cfg)


def run_joint(cfg: dict[str, Any]) -> dict[str, Any]:
    """``--method joint``: ``--target`` is the memory budget in bits per weight (see :mod:`.joint`)."""
    from .codecs import get_weight_codec
    from .pipeline import run

    return run(get_weight_codec("joint"), cfg)


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
