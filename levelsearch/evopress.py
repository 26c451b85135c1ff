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

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .additive import single_unit_probes, solve_additive
from .optimizer import Optimizer, Request
from .space import LevelSpace
from .surrogate import AdditiveSurrogate

__all__ = ["EvoPress", "ReferenceEvoPress", "SelectionStep", "PRESETS", "MAX_SURROGATE_PARAMS"]

#: Largest ``Σ K_i`` for which ``surrogate="auto"`` fits a surrogate.
MAX_SURROGATE_PARAMS = 4096


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


class ReferenceEvoPress(Optimizer):
    """EvoPress as the reference implementation runs it (registered as ``evopress-ref``).

    The yardstick every claim about :class:`EvoPress` is measured against: it follows the
    reference code (IST-DASLab/EvoPress) in its schedules, start, ``min(U{1..3}, U{1..3})``
    switches, a fresh data sample per selection step, the parent re-evaluated only in the
    final step, and the tie rule (the parent is appended last, so an offspring wins ties).

    Args:
        space: the level space (budget kept exactly, or repaired into the band).
        seed: seed of every random choice (mutations and data samples).
        preset: a named schedule from :data:`PRESETS` (``"drop"``, ``"sparsity"``,
            ``"quant"``, ``"super-fast"``, ``"default"``); explicit keywords override it.
        offspring: λ, children per generation (default 16).
        steps: multi-step selection schedule, a list of ``(fidelity, survivors)``
            (default ``[(None, 1)]``: one step at full fidelity).
        max_switches: ``m`` in ``min(U{1..m}, U{1..m})`` switches per child (default 3).
        start: ``"uniform"`` (default; falls back to random when no uniform assignment
            is feasible, with a note when ``"uniform"`` was asked for by keyword or
            preset), ``"random"`` (best of ``init_candidates``
            random feasible assignments), or an explicit feasible assignment.
        init_candidates: random assignments tried for a random start (default 16).
        init_fidelity: fidelity of those start evaluations (default: the first
            step's fidelity).
        max_generations: stop after this many generations (default: no limit;
            the driver's evaluation/cost budget stops the run).
        patience: the stopping rule, in work: stop once this many generations in a row
            improved the parent by less than ``min_improvement`` (relative), measured in
            each generation's final step, where parent and offspring share their data
            (default ``None``: off; a fixed budget runs to its end).
        min_improvement: the relative gain a generation must make to count (default 1e-3).

    Attributes:
        stop_reason: why :meth:`stop` said so, in words ("" while the search goes on).
        start_source: where the start came from: ``"uniform"``, ``"random"``, ``"given"``,
            or (``evopress`` with a prior) ``"prior"``.
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
        patience: int | None = None,
        min_improvement: float = 1e-3,
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
        self.patience = None if patience is None else _positive_int(patience, "patience")
        if (
            isinstance(min_improvement, bool)
            or not isinstance(min_improvement, (int, float))
            or not 0.0 <= float(min_improvement) < 1.0
        ):
            raise ValueError(f"min_improvement must be a fraction in [0, 1), got {min_improvement!r}")
        self.min_improvement = float(min_improvement)
        self._flat = 0  # generations in a row below min_improvement
        self.stop_reason = ""
        self.start_source = ""
        self.start = cfg.get("start", "uniform")
        # the default start goes to random quietly when no uniform assignment is feasible (as documented);
        # a uniform start asked for (by keyword or preset) says so when it cannot be had
        self._start_asked = "start" in cfg

        # set keys of assignments: one byte per unit where levels fit (8x less to hash and to keep)
        self._key_dtype = np.uint8 if int(space.max_level.max()) < 256 else np.int64
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
                    self.start_source = "uniform"
                    return
                if self._start_asked:
                    self._note(
                        "EvoPress: no uniform assignment meets the budget; the search starts from the best of "
                        f"{self.init_candidates} random feasible ones instead (start='random')"
                    )
            self._step = -1
            self.start_source = "random"
            return
        lv = self.space.validate(start)
        if not self.space.is_feasible(lv):
            raise ValueError("start assignment does not meet the budget")
        self.parent = lv
        self._step = 0
        self.start_source = "given"

    # ---------------------------------------------------------------- ask
    def ask(self) -> list[Request]:
        if self._step == -1:
            seen: set[bytes] = set()
            cands: list[np.ndarray] = []
            for _ in range(self.init_candidates * 20):
                if len(cands) >= self.init_candidates:
                    break
                x = self.space.sample(self.rng)
                k = self._key(x)
                if k not in seen:
                    seen.add(k)
                    cands.append(x)
            self._candidates = cands
            return self._requests(cands, self.init_fidelity)
        if self._step == 0:
            self._candidates = self._make_offspring()
            if not self._candidates:
                if np.isfinite(self.parent_value) or self.generation > 0:
                    self._exhausted = True
                    return []
                # no mutation leads anywhere (a space of one feasible assignment): still measure the
                # start once, in a final step of its own, so the recommendation carries its value
                self._step = len(self.steps) - 1
        step = self.steps[self._step]
        batch = list(self._candidates)
        self._parent_in_batch = self._step == len(self.steps) - 1
        if self._parent_in_batch:
            assert self.parent is not None
            batch = [self.parent, *batch]
        return self._requests(batch, step.fidelity)

    def _key(self, levels: np.ndarray) -> bytes:
        return levels.astype(self._key_dtype).tobytes()

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
        parent_key = self._key(self.parent)
        seen = {parent_key}
        kids: list[np.ndarray] = []
        m = self.max_switches
        for _ in range(20 * self.offspring):
            if len(kids) >= self.offspring:
                break
            n_sw = int(min(self.rng.integers(1, m + 1), self.rng.integers(1, m + 1)))
            child = self.space.switch(self.parent, self.rng, n_sw)
            key = self._key(child)
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
        self._count_gain(parent_val, self.parent_value)
        self.generation += 1
        self._step = 0
        self._candidates = []

    def _count_gain(self, before: float, after: float) -> None:
        """The stopping rule's bookkeeping: one generation's relative gain on its final step's data."""
        if np.isfinite(before) and np.isfinite(after):
            gain = (before - after) / max(abs(before), 1e-300)
        else:
            gain = np.inf if np.isfinite(after) else 0.0
        self._flat = self._flat + 1 if gain < self.min_improvement else 0

    def stop(self) -> bool:
        if self._exhausted:
            return True
        if self.patience is not None and self._flat >= self.patience:
            self.stop_reason = (
                f"stopping rule: {self._flat} generations in a row improved the parent by less than "
                f"{self.min_improvement:g} (relative) on their final step's data"
            )
            return True
        if self.max_generations is not None and self.generation >= self.max_generations:
            self.stop_reason = f"max_generations={self.max_generations} reached"
            return True
        return False

    def recommend(self) -> tuple[np.ndarray | None, float]:
        """The current parent and its value at its last final-step evaluation."""
        return (None if self.parent is None else self.parent.copy()), self.parent_value


def _positive_int(x: Any, name: str) -> int:
    if not isinstance(x, (int, np.integer)) or isinstance(x, bool) or x < 1:
        raise ValueError(f"{name} must be a positive integer, got {x!r}")
    return int(x)


class EvoPress(ReferenceEvoPress):
    """EvoPress that learns from every evaluation: the default ``evopress``.

    Same level-switch mutation, schedules and elitism as :class:`ReferenceEvoPress`
    (``evopress-ref``), plus what paid in the ablation of docs/benchmarks.md:

    - **an additive surrogate** (:class:`~levelsearch.surrogate.AdditiveSurrogate`) fitted on
      every value told, with a free offset per batch so that only comparisons on the same
      data count, and the problem's per-unit error estimates as its prior when it has them
      (:meth:`Problem.unit_errors`, passed by :func:`minimize`);
    - **model jumps**: each generation the surrogate's own optimum under the budget (an exact
      knapsack over its per-unit table) joins the offspring unless it was evaluated before;
      with a prior, the first jump is the dp solution of the estimates. The surrogate only
      proposes: a jump survives only by its real value. When the knapsack cannot be solved
      (costs not commensurable, too large a table) jumps stop for the rest of the run, and
      the search says so (a ``RuntimeWarning`` and :meth:`notes`, copied into ``Result.notes``);
    - **probes** (``probe``): without a prior, and when the evaluation ``budget`` is known and
      at least twice ``1 + Σ (K_i - 1)``, the search first measures every single-unit level
      change of its start (dp's design), so the first jump is dp's solution;
    - **paired racing** (``paired``): the parent joins *every* selection step, and all steps
      of a generation draw on one nested data sample (the first ``f`` tokens of one seeded
      order), so every comparison with the parent is on the same tokens, and an oracle that
      remembers per-sequence results never pays twice for a token. An offspring that is not
      better than the parent on a step's tokens stops there; a generation whose offspring all
      lose ends early;
    - **surrogate screening** (``screen``): each generation draws ``screen × offspring``
      mutants and evaluates the ``offspring`` the surrogate ranks best (a fraction
      ``explore`` of them at random); the surrogate chooses whom to evaluate, never who
      survives;
    - **no repeats** (``no_repeats``): an assignment that lost a final step is not proposed
      again (``"auto"``: when the final step's values are exact, i.e. its fidelity is ``None``;
      a noisy loser may deserve another try).

    Deterministic given the seed and the values told (resume replays the surrogate's fit).

    Args:
        space, seed, preset, offspring, steps, max_switches, start, init_candidates,
        init_fidelity, max_generations: as for :class:`ReferenceEvoPress`.
        surrogate: fit the surrogate (``"auto"``, default: when ``Σ K_i`` is at most
            :data:`MAX_SURROGATE_PARAMS`, else with a note); without it there are no jumps,
            probes or screening.
        screen: mutants drawn per offspring evaluated, ranked by the surrogate (default 4; 1: off).
        explore: fraction of the screened offspring chosen at random (default 0.25).
        jump: propose the surrogate's optimum each generation (default true).
        paired: the parent in every step, one nested sample per generation (default true).
        prior: ``(n_units, max_levels)`` per-unit, per-level error estimates.
        decay: weight kept per generation by past evaluations in the surrogate (default 0.97).
        use_unit_errors: take the problem's :meth:`~levelsearch.Problem.unit_errors` as the
            prior when none is given (default true; what measuring them costs is the problem's).
        probe: ``"auto"`` (default: as above), ``True`` or ``False``.
        budget: the run's evaluation budget, if known (``levelsearch bench`` passes it).
        no_repeats: ``"auto"`` (default), ``True`` or ``False`` (see above).
    """

    wants_unit_errors = True

    @property
    def has_prior(self) -> bool:
        """Whether error estimates were given (or the search has started, when it is too late)."""
        return (
            self._has_prior
            or not self.use_unit_errors
            or not self.use_surrogate
            or self.generation > 0
            or self._step > 0
        )

    def __init__(
        self,
        space: LevelSpace,
        *,
        surrogate: bool | str = "auto",
        screen: int = 4,
        explore: float = 0.25,
        jump: bool = True,
        paired: bool = True,
        prior: np.ndarray | None = None,
        decay: float = 0.97,
        use_unit_errors: bool = True,
        probe: bool | str = "auto",
        budget: int | None = None,
        no_repeats: bool | str = "auto",
        **options: Any,
    ) -> None:
        super().__init__(space, **options)
        if surrogate not in (True, False, "auto"):
            raise ValueError(f"surrogate must be true, false or 'auto', got {surrogate!r}")
        n_params = int(space.n_levels.sum())
        # prediction, jumps and probes grow with the levels in all: past this, the search runs without
        self.use_surrogate = surrogate is True or (surrogate == "auto" and n_params <= MAX_SURROGATE_PARAMS)
        if surrogate == "auto" and not self.use_surrogate:
            self._note(
                f"EvoPress: no surrogate, so no model jumps, probes or screening: the space has {n_params} levels "
                f"in all, more than MAX_SURROGATE_PARAMS={MAX_SURROGATE_PARAMS} (surrogate=true fits one anyway)"
            )
        self.screen = _positive_int(screen, "screen")
        if isinstance(explore, bool) or not isinstance(explore, (int, float)) or not 0.0 <= float(explore) <= 1.0:
            raise ValueError(f"explore must be a fraction in [0, 1], got {explore!r}")
        self.explore = float(explore)
        self.jump = bool(jump)
        self.paired = bool(paired)
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 < float(decay) <= 1.0:
            raise ValueError(f"decay must be in (0, 1], got {decay!r}")
        self.decay = float(decay)
        self.use_unit_errors = bool(use_unit_errors)
        if probe not in (True, False, "auto"):
            raise ValueError(f"probe must be true, false or 'auto', got {probe!r}")
        self.probe = probe
        self.budget = None if budget is None else _positive_int(budget, "budget")
        self._probing = False
        self._probed = False
        self._valuing = False
        self._valued = False
        self.surrogate: AdditiveSurrogate | None = None
        self._jump_ok = True
        self._lost: set[bytes] = set()  # assignments that lost a final step
        if no_repeats not in (True, False, "auto"):
            raise ValueError(f"no_repeats must be true, false or 'auto', got {no_repeats!r}")
        # "auto": only when the final step's value is exact (the full data); a noisy loser may deserve another try
        self.no_repeats = no_repeats is True or (no_repeats == "auto" and self.steps[-1].fidelity is None)
        self._sample: int | None = None
        self._mutator = _Mutator(space, self.rng)
        self.surrogate_seconds = 0.0
        self._has_prior = False
        self.set_prior(prior)

    def set_prior(self, prior: np.ndarray | None) -> None:
        """Use per-unit, per-level error estimates as the surrogate's prior (before the first ask)."""
        if self.generation > 0 or (self._step > 0):
            raise ValueError("set_prior() must be called before the search starts")
        if not self.use_surrogate:
            return
        self.surrogate = AdditiveSurrogate(self.space, prior=prior, decay=self.decay)
        self._has_prior = prior is not None
        if prior is not None and not self._start_asked and self.start_source in ("uniform", "random"):
            self._start_from_prior()

    def _start_from_prior(self) -> None:
        """No start asked for: begin at the knapsack optimum of the prior (dp's answer), not at a uniform
        or random assignment; it is measured once at the final fidelity before the first generation."""
        assert self.surrogate is not None
        try:
            lv, _ = solve_additive(self.space, self.surrogate.unit_table())
        except ValueError:  # costs the DP cannot handle: the optimizer's own start stands
            return
        if self.space.is_feasible(lv):
            self.parent, self.parent_value = lv, float("inf")
            self._step, self.start_source = 0, "prior"

    # ---------------------------------------------------------------- ask
    def n_probes(self) -> int:
        """Evaluations of the probe phase: the start and every single-unit level change."""
        return 1 + int((self.space.n_levels - 1).sum())

    def _wants_probes(self) -> bool:
        if self._probed or self.probe is False or self._has_prior or self.generation > 0 or self.surrogate is None:
            return False
        if self.probe is True:
            return True
        return self.budget is not None and self.n_probes() <= self.budget // 2

    def ask(self) -> list[Request]:
        if self._step == -1:
            return super().ask()
        if self._step == 0 and not np.isfinite(self.parent_value) and not self._valued:
            # a given start has no value yet: measure it once at the final fidelity, so that the
            # recommendation always carries one (racing may end generations before the final step)
            self._valuing = self._valued = True
            assert self.parent is not None
            fid = self.steps[-1].fidelity
            sample = None if fid is None else int(self.rng.integers(2**31 - 1))
            return [Request(self.parent, fid, sample)]
        if self._step == 0 and self.generation == 0 and not self._probing and self._wants_probes():
            self._probing = self._probed = True
            self._candidates = self._probes()
            fid = self.steps[0].fidelity
            sample = None if fid is None else int(self.rng.integers(2**31 - 1))
            return [Request(c, fid, sample) for c in self._candidates]
        if self._step == 0:
            self._candidates = self._make_offspring()
            if not self._candidates:
                self._exhausted = True
                return []
            self._sample = int(self.rng.integers(2**31 - 1))
        step = self.steps[self._step]
        final = self._step == len(self.steps) - 1
        self._parent_in_batch = self.paired or final
        assert self.parent is not None
        batch = [self.parent, *self._candidates] if self._parent_in_batch else list(self._candidates)
        if not self.paired:
            return self._requests(batch, step.fidelity)
        sample = None if step.fidelity is None else self._sample
        return [Request(c, step.fidelity, sample) for c in batch]

    def _make_offspring(self) -> list[np.ndarray]:
        assert self.parent is not None
        sur = self.surrogate if self.screen > 1 else None
        informed = sur is not None and (sur.n_rows > 0 or self._has_prior)
        kids: list[np.ndarray] = []
        seen = {self._key(self.parent)}
        lost = self._lost if self.no_repeats else set()
        jump = self._jump_candidate()
        if jump is not None:
            jump_key = self._key(jump)
            if jump_key not in seen and jump_key not in lost:
                kids.append(jump)
                seen.add(jump_key)
        want = self.offspring
        pool_size = want * (self.screen if informed else 1)
        pool: list[np.ndarray] = []
        for _ in range(20):  # at most 20 draws per mutant wanted, as evopress-ref
            for child in self._mutator.children(self.parent, pool_size, self.max_switches):
                key = self._key(child)
                if key in seen or key in lost:
                    continue
                seen.add(key)
                pool.append(child)
                if len(pool) >= pool_size:
                    break
            if len(pool) >= pool_size:
                break
        if not informed or len(pool) <= want:
            return kids + pool[:want]
        assert sur is not None
        t0 = time.perf_counter()
        pred = sur.predict(np.stack(pool))
        self.surrogate_seconds += time.perf_counter() - t0
        n_random = int(round(self.explore * want))
        order = np.argsort(pred, kind="stable")
        chosen = list(order[: want - n_random])
        rest = order[want - n_random :]
        if n_random and rest.size:
            chosen += list(self.rng.choice(rest, size=min(n_random, rest.size), replace=False))
        return kids + [pool[int(k)] for k in chosen]

    def _probes(self) -> list[np.ndarray]:
        """The parent and, for every unit and level, the parent with that unit moved there and the
        budget repaired elsewhere (dp's design: it identifies an additive model)."""
        assert self.parent is not None
        x0 = self.parent
        probes = single_unit_probes(self.space, x0, self.rng)
        return [x0.copy(), *(y for y in probes if self.space.is_feasible(y) and not np.array_equal(y, x0))]

    def _jump_candidate(self) -> np.ndarray | None:
        sur = self.surrogate
        if not (self.jump and self._jump_ok and sur is not None and (sur.n_rows > 0 or self._has_prior)):
            return None
        t0 = time.perf_counter()
        table = sur.unit_table()
        try:
            lv, _ = solve_additive(self.space, table)
        except ValueError as exc:  # costs not commensurable or too large a DP: no jumps
            self._jump_ok = False
            self._note(f"EvoPress: model jumps are off for the rest of the run: {exc}")
            return None
        finally:
            self.surrogate_seconds += time.perf_counter() - t0
        return lv if self.space.is_feasible(lv) else None

    # --------------------------------------------------------------- tell
    def tell(self, requests: Sequence[Request], values: Sequence[float]) -> None:
        vals = np.asarray(values, dtype=float)
        vals = np.where(np.isnan(vals), np.inf, vals)
        if len(vals) != len(requests):
            raise ValueError("tell() needs one value per request")
        self._learn(requests, vals)
        if self._step == -1:
            super().tell(requests, vals.tolist())
            return
        if self._valuing:
            self._valuing = False
            self.parent_value = float(vals[0])
            return
        if self._probing:  # the probe batch (asked last, told now)
            self._probing = False
            self._candidates = []
            if self.surrogate is not None:
                self.surrogate.fit(exact=True)
            best = int(np.argmin(vals))
            if np.isfinite(vals[best]) and vals[best] < vals[0]:
                self.parent = requests[best].levels.copy()
                self.parent_value = float(vals[best])
            return
        step = self.steps[self._step]
        final = self._step == len(self.steps) - 1
        parent_val = float(vals[0]) if self._parent_in_batch else float("nan")
        kid_vals = vals[1:] if self._parent_in_batch else vals
        order = np.argsort(kid_vals, kind="stable")
        if final:
            winner: int | None = None
            if order.size:
                best = int(order[0])
                best_kid = float(kid_vals[best])
                if np.isfinite(best_kid) and (not np.isfinite(parent_val) or best_kid <= parent_val):
                    winner = best
            assert self.parent is not None
            for k, cand in enumerate(self._candidates):
                if k != winner:
                    self._lost.add(self._key(cand))
            if winner is not None:
                self._lost.add(self._key(self.parent))
                self.parent = self._candidates[winner]
                self.parent_value = float(kid_vals[winner])
            else:
                self.parent_value = parent_val
            self._count_gain(parent_val, self.parent_value)
            self._end_generation()
            return
        keep = [int(k) for k in order[: step.survivors] if np.isfinite(kid_vals[int(k)])]
        if self.paired and self._step > 0 and np.isfinite(parent_val):
            # race: past the first (noisiest) step only those ahead of the parent on the same tokens go on
            keep = [k for k in keep if kid_vals[k] <= parent_val]
        if not keep:
            self._flat += 1  # no offspring reached the final step: no gain this generation
            self._end_generation()
            return
        self._candidates = [self._candidates[k] for k in keep]
        self._step += 1

    def _end_generation(self) -> None:
        self.generation += 1
        self._step = 0
        self._candidates = []
        if self.surrogate is not None:
            t0 = time.perf_counter()
            self.surrogate.age()
            self.surrogate.fit()
            self.surrogate_seconds += time.perf_counter() - t0

    def _learn(self, requests: Sequence[Request], vals: np.ndarray) -> None:
        sur = self.surrogate
        if sur is None or len(requests) < 2:
            return
        t0 = time.perf_counter()
        fids = {r.fidelity for r in requests}
        fid = next(iter(fids)) if len(fids) == 1 else None
        top = max((s.fidelity or 0) for s in self.steps) or 1
        weight = 1.0 if fid is None else min(1.0, float(fid) / float(top))
        sur.add_batch(np.stack([r.levels for r in requests]), vals, weight)
        if self._step == -1:
            sur.fit()
        self.surrogate_seconds += time.perf_counter() - t0


class _Mutator:
    """Level-switch mutants of a parent, many at a time: what :meth:`LevelSpace.switch` does, with the random
    numbers drawn in blocks (a scalar draw costs microseconds; a mutant needs several).

    Where every group has an exact budget band and equal level steps (the usual case: a switch keeps the
    total, and no single move is allowed), a switch raises a uniformly chosen unit that can go up and lowers a
    uniformly chosen other unit of its group that can go down, as ``switch`` does by rejection sampling. Any
    other space, or a parent where 32 tries find no pair, takes :meth:`LevelSpace.switch` itself.
    """

    _TRIES = 32

    def __init__(self, space: LevelSpace, rng: np.random.Generator) -> None:
        self.space, self.rng = space, rng
        # the same package's space: its groups' budgets decide the fast path
        groups = list(getattr(space, "_groups", None) or [])
        self.fast = bool(groups) and all(g.hi is not None and g.uniform_steps and not g.band_moves for g in groups)
        self._members = [g.units.tolist() for g in groups]
        self._group_of = space.group_of.tolist()
        self._max = space.max_level
        self._max_list = space.max_level.tolist()

    def children(self, parent: np.ndarray, count: int, max_switches: int) -> list[np.ndarray]:
        """``count`` mutants of ``parent`` (not necessarily distinct), each with ``min(U{1..m}, U{1..m})``
        switches for ``m = max_switches``."""
        m = max_switches
        n_sw = np.minimum(self.rng.integers(1, m + 1, size=count), self.rng.integers(1, m + 1, size=count))
        if not self.fast:
            return [self.space.switch(parent, self.rng, int(k)) for k in n_sw]
        tries = self._TRIES * int(n_sw.sum())
        pick_i = self.rng.integers(self.space.n_units, size=tries).tolist()
        pick_j = self.rng.random(tries).tolist()
        raisable, lowerable = (parent < self._max).tolist(), (parent > 0).tolist()
        members, group_of, top = self._members, self._group_of, self._max_list
        out: list[np.ndarray] = []
        t = 0
        for k in n_sw.tolist():
            child = parent.copy()
            # a single switch reads the parent's lists; several keep their own, updated as they go
            up, down = (raisable, lowerable) if k == 1 else (raisable.copy(), lowerable.copy())
            for _ in range(k):
                for _ in range(self._TRIES):
                    i = pick_i[t]
                    t += 1
                    if not up[i]:
                        continue
                    us = members[group_of[i]]
                    j = us[int(pick_j[t - 1] * len(us))]
                    if j != i and down[j]:
                        child[i] += 1
                        child[j] -= 1
                        if k > 1:
                            up[i], down[i] = int(child[i]) < top[i], True
                            up[j], down[j] = True, int(child[j]) > 0
                        break
                else:  # no pair found by chance: the space's own exhaustive choice
                    child = self.space.switch(child, self.rng, 1)
                    up, down = (child < self._max).tolist(), (child > 0).tolist()
            out.append(child)
        return out
