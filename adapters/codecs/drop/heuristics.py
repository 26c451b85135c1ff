"""Published dropping heuristics, as feasible assignments of a :class:`DropProblem`'s space.

All are computed on calibration data only, from dense residual-stream states captured
layer by layer (not ``output_hidden_states``, whose last entry comes after the final norm):

- ``shortgpt``: ShortGPT block influence (Men et al., 2024), ``1 − cos(h_in, h_out)`` of each
  whole layer averaged over tokens; the ``k`` least influential layers are dropped entirely
  (k attention + k MLP). Only for the per-type budget or whole-block units.
- ``shortgpt-sub``: the same influence per sub-block (attention: ``h → h + attn``; MLP:
  ``h + attn → next h``), least influential per group.
- ``angular``: Gromov et al. (2024): the window of consecutive units whose input and output
  states have the smallest mean angular distance ``arccos(cos) / π`` is dropped.
- ``single-kl``: KL to the dense model of dropping each unit alone (the ``dp`` baseline's
  input), least harmful per group (an exact additive solve).
- ``random``: a seeded random feasible assignment.

Scores become assignments through :func:`levelsearch.solve_additive` (``errors[i, 1]`` = score).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from levelsearch import solve_additive

if TYPE_CHECKING:  # annotations only: the problem imports this module for its default start
    from .problem import DropProblem

__all__ = ["HEURISTICS", "angular_distances", "influence", "run_heuristics"]


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1, eps=1e-8)


def influence(states: list[torch.Tensor], step: int = 1) -> np.ndarray:
    """``1 − mean cos(states[i], states[i + step])`` for every start ``i`` with a step of ``step``."""
    return np.array([float((1 - _cos(states[i], states[i + step])).mean()) for i in range(0, len(states) - step, step)])


def angular_distances(states: list[torch.Tensor], width: int) -> np.ndarray:
    """Mean angular distance ``arccos(cos(h_i, h_{i+width})) / π`` for every window start ``i``."""
    out = []
    for i in range(len(states) - width):
        c = _cos(states[i], states[i + width]).clamp(-1.0, 1.0)
        out.append(float((torch.arccos(c) / math.pi).mean()))
    return np.array(out)


def _from_scores(problem: DropProblem, scores: np.ndarray) -> np.ndarray:
    errors = np.zeros((problem.space.n_units, 2))
    errors[:, 1] = scores - scores.min() + 1e-9  # solve_additive wants comparable non-negative errors
    levels, _ = solve_additive(problem.space, errors)
    return np.asarray(levels, dtype=np.int64)


class _Cache:
    def __init__(self, problem: DropProblem, n_tokens: int, seed: int) -> None:
        self.problem, self.n_tokens, self.seed = problem, n_tokens, seed
        self._states: list[torch.Tensor] | None = None

    @property
    def states(self) -> list[torch.Tensor]:
        if self._states is None:
            self._states = self.problem.boundary_states(self.n_tokens, self.seed)
        return self._states


def _k_per_group(problem: DropProblem) -> int:
    """Units dropped per group (per-type budget), or in total."""
    sp = problem.space
    lv = sp.sample(np.random.default_rng(0))
    if problem.whole_blocks or not sp.group_labels or len(set(sp.group_labels)) < 2:
        return int(lv.sum())
    return int(lv[sp.group_units(sp.group_labels[0])].sum())


def shortgpt(problem: DropProblem, cache: _Cache) -> np.ndarray:
    st = cache.states
    k = _k_per_group(problem)
    if problem.whole_blocks:
        return _from_scores(problem, influence(st, 1))
    if problem.budget != "per-type":
        raise ValueError("block-level ShortGPT needs the per-type budget or whole-block units")
    layer_inf = influence(st, 2)
    chosen = np.argsort(layer_inf, kind="stable")[:k]
    lv = np.zeros(problem.space.n_units, dtype=np.int64)
    lv[2 * chosen] = 1
    lv[2 * chosen + 1] = 1
    return lv


def shortgpt_sub(problem: DropProblem, cache: _Cache) -> np.ndarray:
    return _from_scores(problem, influence(cache.states, 1))


def angular(problem: DropProblem, cache: _Cache) -> np.ndarray:
    """Drop the window of consecutive units with the smallest angular distance."""
    n_drop = int(problem.space.sample(np.random.default_rng(0)).sum())
    st = cache.states
    d = angular_distances(st, n_drop)
    if not problem.whole_blocks and problem.budget == "per-type" and n_drop % 2:
        d[:] = np.inf  # an odd window cannot hold k + k sub-blocks
    for start in np.argsort(d, kind="stable"):
        lv = np.zeros(problem.space.n_units, dtype=np.int64)
        lv[start : start + n_drop] = 1
        if problem.space.is_feasible(lv):
            return lv
    raise ValueError("no window of consecutive units meets the budget")


def single_kl(problem: DropProblem, cache: _Cache) -> np.ndarray:
    return _from_scores(problem, problem.single_drop_kl(cache.n_tokens // 8, cache.seed))


def random_drop(problem: DropProblem, cache: _Cache) -> np.ndarray:
    return problem.space.sample(np.random.default_rng(cache.seed))


#: name → function(problem, cache) returning a feasible assignment.
HEURISTICS: dict[str, Callable[[DropProblem, _Cache], np.ndarray]] = {
    "shortgpt": shortgpt,
    "shortgpt-sub": shortgpt_sub,
    "angular": angular,
    "single-kl": single_kl,
    "random": random_drop,
}


def run_heuristics(
    problem: DropProblem, names: list[str] | None = None, *, n_tokens: int = 2048, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """Assignments of the named heuristics (default: all that apply) with the seconds each took.

    ``n_tokens`` calibration tokens feed the hidden-state statistics (an eighth of them the
    single-drop KLs). Returns ``{name: {"levels": array, "seconds": float}}``.
    """
    import time

    cache = _Cache(problem, n_tokens, seed)
    out: dict[str, dict[str, Any]] = {}
    for name in names or list(HEURISTICS):
        if name not in HEURISTICS:
            raise ValueError(f"unknown heuristic {name!r}; known: {', '.join(HEURISTICS)}")
        if name == "shortgpt" and not problem.whole_blocks and problem.budget != "per-type":
            continue
        t0 = time.perf_counter()
        lv = HEURISTICS[name](problem, cache)
        if not problem.space.is_feasible(lv):
            raise RuntimeError(f"heuristic {name} produced an infeasible assignment")
        out[name] = {"levels": lv, "seconds": time.perf_counter() - t0}
    return out
