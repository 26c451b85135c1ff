"""EvoPress: (1 + λ) evolutionary search with level-switch mutation and multi-step selection.

Sieberling, Kuznedelev, Kurtic, Alistarh — "EvoPress: Accurate Dynamic Model
Compression via Evolutionary Search", ICML 2025.

One generation:

1. make ``offspring`` distinct children of the parent by level-switch mutation
   (``min(U{1..m}, U{1..m})`` switches each, ``m = max_switches``, so few switches
   are likely: 5/9, 3/9, 1/9 for ``m = 3``);
2. evaluate them at the first step's fidelity on a fresh data sample, keep the
   best ``survivors``; repeat for every step of the schedule, a fresh sample per
   step; the parent joins the final step and is re-evaluated there;
3. the best candidate of the final step becomes the parent (an offspring wins
   ties, which lets the search drift across plateaus; a parent is never replaced
   by a failed evaluation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .optimizer import Optimizer, Request
from .space import LevelSpace

__all__ = ["EvoPress", "SelectionStep", "PRESETS"]


@dataclass(frozen=True)
class SelectionStep:
    """One step of multi-step selection.

    Attributes:
        fidelity: data the oracle may use per candidate (tokens, samples);
            ``None`` means the problem's default, full fidelity.
        survivors: how many candidates go on to the next step (``1`` on the last).
    """

    fidelity: int | None
    survivors: int


#: The reference implementation's schedules (fidelity in tokens), plus a
#: single-step default for oracles without a fidelity. See REFERENCE.md.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {"offspring": 16, "steps": [(None, 1)]},
    "drop": {
        "offspring": 32,
        "steps": [(2048, 2), (32768, 1)],
        "start": "random",
        "init_candidates": 64,
        "init_fidelity": 2048,
    },
    "sparsity": {"offspring": 64, "steps": [(2048, 8), (16384, 2), (65536, 1)], "start": "uniform"},
    "quant": {
        "offspring": 128,
        "steps": [(2048, 16), (16384, 4), (131072, 1)],
        "start": "uniform",
        "init_candidates": 32,
        "init_fidelity": 2048,
    },
    "super-fast": {"offspring": 16, "steps": [(512, 1), (8192, 1)]},
}


def _parse_steps(steps: Any) -> list[SelectionStep]:
    out: list[SelectionStep] = []
    if not isinstance(steps, (list, tuple)) or not steps:
        raise ValueError("steps must be a non-empty list of (fidelity, survivors) pairs")
    for k, st in enumerate(steps):
        if isinstance(st, SelectionStep):
            out.append(st)
            continue
        if isinstance(st, dict):
            unknown = set(st) - {"fidelity", "survivors"}
            if unknown:
                raise ValueError(f"steps[{k}] has unknown keys {sorted(unknown)}; use fidelity and survivors")
            fid, surv = st.get("fidelity"), st.get("survivors")
        else:
            try:
                fid, surv = st
            except (TypeError, ValueError):
                raise ValueError(f"steps[{k}] must be (fidelity, survivors), got {st!r}") from None
        if fid is not None and (not isinstance(fid, (int, np.integer)) or isinstance(fid, bool) or fid < 1):
            raise ValueError(f"steps[{k}].fidelity must be a positive integer or null, got {fid!r}")
        if not isinstance(surv, (int, np.integer)) or isinstance(surv, bool) or surv < 1:
            raise ValueError(f"steps[{k}].survivors must be a positive integer, got {surv!r}")
        out.append(SelectionStep(None if fid is None else int(fid), int(surv)))
    if out[-1].survivors != 1:
        raise ValueError("the last selection step must keep exactly 1 survivor")
    for a, b in zip(out, out[1:]):
        if b.survivors > a.survivors:
            raise ValueError("survivors must not grow from one selection step to the next")
    return out


class EvoPress(Optimizer):
    """EvoPress as an ask/tell optimizer.

    Args:
        space: the level space (budget kept exactly, or repaired into the band).
        seed: seed of every random choice (mutations and data samples).
        preset: a named schedule from :data:`PRESETS` (``"drop"``, ``"sparsity"``,
            ``"quant"``, ``"super-fast"``, ``"default"``); explicit keywords override it.
        offspring: λ, children per generation (default 16).
        steps: multi-step selection schedule, a list of ``(fidelity, survivors)``
            (default ``[(None, 1)]``: one step at full fidelity).
        max_switches: ``m`` in ``min(U{1..m}, U{1..m})`` switches per child (default 3).
        start: ``"uniform"`` (default; falls back to random when no uniform
            assignment is feasible), ``"random"`` (best of ``init_candidates``
            random feasible assignments), or an explicit feasible assignment.
        init_candidates: random assignments tried for a random start (default 16).
        init_fidelity: fidelity of those start evaluations (default: the first
            step's fidelity).
        max_generations: stop after this many generations (default: no limit;
            the driver's evaluation/cost budget stops the run).
    """

    multi_fidelity = True

    def __init__(
        self,
        space: LevelSpace,
        *,
        seed: int = 0,
        preset: str | None = None,
        offspring: int | None = None,
        steps: Sequence[Any] | None = None,
        max_switches: int | None = None,
        start: str | Sequence[int] | np.ndarray | None = None,
        init_candidates: int | None = None,
        init_fidelity: int | None = None,
        max_generations: int | None = None,
    ) -> None:
        super().__init__(space, seed=seed)
        base: dict[str, Any] = dict(PRESETS["default"])
        if preset is not None:
            if preset not in PRESETS:
                raise ValueError(f"unknown EvoPress preset {preset!r}; known: {', '.join(PRESETS)}")
            base.update(PRESETS[preset])
        given = {
            "offspring": offspring,
            "steps": steps,
            "max_switches": max_switches,
            "start": start,
            "init_candidates": init_candidates,
            "init_fidelity": init_fidelity,
        }
        cfg = {**base, **{k: v for k, v in given.items() if v is not None}}
        self.offspring = _positive_int(cfg["offspring"], "offspring")
        self.steps = _parse_steps(cfg["steps"])
        self.max_switches = _positive_int(cfg.get("max_switches", 3), "max_switches")
        self.init_candidates = _positive_int(cfg.get("init_candidates", 16), "init_candidates")
        self.init_fidelity = cfg.get("init_fidelity", self.steps[0].fidelity)
        self.max_generations = None if max_generations is None else _positive_int(max_generations, "max_generations")
        self.start = cfg.get("start", "uniform")

        self.parent: np.ndarray | None = None
        self.parent_value = float("inf")
        self.generation = 0
        self._step = -1  # -1: start phase; 0..len(steps)-1: selection step
        self._candidates: list[np.ndarray] = []
        self._parent_in_batch = False
        self._exhausted = False
        self._choose_start()

    # -------------------------------------------------------------- start
    def _choose_start(self) -> None:
        start = self.start
        if isinstance(start, str):
            if start not in ("uniform", "random"):
                raise ValueError(f"start must be 'uniform', 'random' or an assignment, got {start!r}")
            if start == "uniform":
                uni = self.space.uniform()
                if uni is not None:
                    self.parent = uni
                    self._step = 0
                    return
            self._step = -1
            return
        lv = self.space.validate(start)
        if not self.space.is_feasible(lv):
            raise ValueError("start assignment does not meet the budget")
        self.parent = lv
        self._step = 0

    # ---------------------------------------------------------------- ask
    def ask(self) -> list[Request]:
        if self._step == -1:
            seen: set[bytes] = set()
            cands: list[np.ndarray] = []
            for _ in range(self.init_candidates * 20):
                if len(cands) >= self.init_candidates:
                    break
                x = self.space.sample(self.rng)
                k = x.tobytes()
                if k not in seen:
                    seen.add(k)
                    cands.append(x)
            self._candidates = cands
            return self._requests(cands, self.init_fidelity)
        if self._step == 0:
            self._candidates = self._make_offspring()
            if not self._candidates:
                self._exhausted = True
                return []
        step = self.steps[self._step]
        batch = list(self._candidates)
        self._parent_in_batch = self._step == len(self.steps) - 1
        if self._parent_in_batch:
            assert self.parent is not None
            batch = [self.parent, *batch]
        return self._requests(batch, step.fidelity)

    def _requests(self, cands: list[np.ndarray], fidelity: int | None) -> list[Request]:
        # one fresh data sample per step, shared by all candidates of the step
        sample = int(self.rng.integers(2**31 - 1))
        if fidelity is None:
            sample_seed = None
        else:
            sample_seed = sample
        return [Request(c, fidelity, sample_seed) for c in cands]

    def _make_offspring(self) -> list[np.ndarray]:
        assert self.parent is not None
        parent_key = self.parent.tobytes()
        seen = {parent_key}
        kids: list[np.ndarray] = []
        m = self.max_switches
        for _ in range(20 * self.offspring):
            if len(kids) >= self.offspring:
                break
            n_sw = int(min(self.rng.integers(1, m + 1), self.rng.integers(1, m + 1)))
            child = self.space.switch(self.parent, self.rng, n_sw)
            key = child.tobytes()
            if key in seen:
                continue
            seen.add(key)
            kids.append(child)
        return kids

    # --------------------------------------------------------------- tell
    def tell(self, requests: Sequence[Request], values: Sequence[float]) -> None:
        vals = np.asarray(values, dtype=float)
        vals = np.where(np.isnan(vals), np.inf, vals)
        if len(vals) != len(requests):
            raise ValueError("tell() needs one value per request")
        if self._step == -1:
            order = np.argsort(vals, kind="stable")
            best = int(order[0])
            self.parent = self._candidates[best]
            self.parent_value = float(vals[best])
            self._step = 0
            return
        if self._parent_in_batch:
            parent_val = float(vals[0])
            kid_vals = vals[1:]
        else:
            parent_val = float("nan")
            kid_vals = vals
        step = self.steps[self._step]
        order = np.argsort(kid_vals, kind="stable")[: step.survivors]
        survivors = [self._candidates[int(k)] for k in order]
        if not self._parent_in_batch:
            self._candidates = survivors
            self._step += 1
            return
        # final step: elitist choice between the parent and the best offspring
        best_kid = float(kid_vals[order[0]]) if order.size else float("inf")
        if np.isfinite(best_kid) and (not np.isfinite(parent_val) or best_kid <= parent_val):
            self.parent = survivors[0]
            self.parent_value = best_kid
        else:
            self.parent_value = parent_val
        self.generation += 1
        self._step = 0
        self._candidates = []

    def stop(self) -> bool:
        if self._exhausted:
            return True
        return self.max_generations is not None and self.generation >= self.max_generations

    def recommend(self) -> tuple[np.ndarray | None, float]:
        """The current parent and its value at its last final-step evaluation."""
        return (None if self.parent is None else self.parent.copy()), self.parent_value


def _positive_int(x: Any, name: str) -> int:
    if not isinstance(x, (int, np.integer)) or isinstance(x, bool) or x < 1:
        raise ValueError(f"{name} must be a positive integer, got {x!r}")
    return int(x)
