"""Plots a person can look at: convergence of one run (more live in the bench and report modules)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .driver import TracePoint

__all__ = ["plot_convergence"]


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_convergence(
    trace: Sequence[TracePoint],
    path: str | Path,
    *,
    title: str = "",
    optimum: float | None = None,
    by_cost: bool = False,
) -> Path:
    """Write a PNG of the recommended value against evaluations (or fidelity cost).

    Draws the optimizer's measured value, the noise-free value when the problem
    offers one, and the known optimum as a dashed line.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    xs = [t.cost if by_cost else t.n_evaluations for t in trace]
    ax.step(xs, [t.value for t in trace], where="post", label="recommended (measured)")
    if any(t.true_value is not None for t in trace):
        ax.step(xs, [t.true_value for t in trace], where="post", label="recommended (true)", alpha=0.8)
    if optimum is not None:
        ax.axhline(optimum, ls="--", color="k", lw=1, label=f"optimum {optimum:.4g}")
    ax.set_xlabel("fidelity spent" if by_cost else "evaluations")
    ax.set_ylabel("fitness (lower is better)")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out
