"""The level-assignment space: units, levels, costs and a budget.

A :class:`LevelSpace` has ``n`` units; unit ``i`` takes an integer level in
``0 .. n_levels[i] - 1`` and each level has a cost (default: the level itself).
A budget constrains the total cost of every *group* of units (one group holding
all units unless ``groups`` is given): exactly (``tol == 0``) or within the band
``[total - tol, total]``.

The space knows feasibility, sampling, repair and the level-switch mutation;
optimizers only propose.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from functools import reduce
from typing import Any

import numpy as np

__all__ = ["LevelSpace"]

_EPS = 1e-9
# Largest number of distinct (gcd-normalised) totals for which exact-budget
# feasibility is decided by dynamic programming; above it only the range is checked.
_DP_RANGE_LIMIT = 4_000_000
#: Largest number of units, of levels of one unit, and of (unit, level) cells of the cost table
#: (8 bytes each: 400 MB); more is a typo, refused before anything is allocated.
MAX_UNITS = 1_000_000
MAX_LEVELS = 100_000
MAX_CELLS = 50_000_000


@dataclass(frozen=True)
class _Group:
    label: Hashable
    units: np.ndarray  # int64 indices, sorted
    lo: float | None  # lowest allowed total (None: no budget)
    hi: float | None  # highest allowed total
    uniform_steps: bool  # every level step of every unit costs the same amount
    step: float  # that amount when uniform_steps
    band_moves: bool = False  # uniform steps and a band wider than a step: single moves change the total


class LevelSpace:
    """Integer levels per unit under a (grouped) budget on the total cost.

    Args:
        n_levels: number of levels of every unit (an ``int`` together with
            ``n_units``), or one count per unit. Each count must be at least 1.
        n_units: number of units when ``n_levels`` is an ``int``.
        total: the budget on the total cost. ``None`` means unconstrained.
            Without ``groups`` a number bounds the sum over all units. With
            ``groups`` either a mapping ``group -> number`` (every group needs one)
            or a single number that then applies to *each* group (e.g. "k
            attention and k MLP sub-blocks dropped").
        costs: per-unit, per-level costs (a list of sequences, or a 2-D array
            when all units have the same number of levels). Default: the level
            itself, so the budget bounds the sum of levels.
        groups: a partition of the units: a sequence of ``n`` labels (one per
            unit) or a mapping ``label -> unit indices``. Switches stay within a
            group and each group has its own budget.
        tol: width of the budget band: a feasible total lies in
            ``[total - tol, total]``. ``0`` (default) asks for the exact total.
            A mapping ``group -> tol`` is accepted with ``groups``.

    Raises:
        ValueError: on malformed arguments, or when no assignment can meet a
            budget (the message names the reachable range).
    """

    def __init__(
        self,
        n_levels: int | Sequence[int],
        n_units: int | None = None,
        total: float | Mapping[Hashable, float] | None = None,
        costs: Sequence[Sequence[float]] | np.ndarray | None = None,
        groups: Sequence[Hashable] | Mapping[Hashable, Sequence[int]] | None = None,
        tol: float | Mapping[Hashable, float] = 0,
    ) -> None:
        self.n_levels = _parse_levels(n_levels, n_units)
        n = self.n_levels.size
        self.n_units = n
        self.max_level = self.n_levels - 1
        self._costs = _parse_costs(costs, self.n_levels)
        self.group_of = _parse_groups(groups, n)
        labels = list(dict.fromkeys(self.group_labels_in_order(groups)))
        self.group_labels: list[Hashable] = labels
        self.total = total
        self.tol = tol
        self._groups = [self._make_group(g, label, total, tol, groups is not None) for g, label in enumerate(labels)]
        # cost increments of raising each unit by one level, padded with nan
        self._up_delta = _increments(self._costs, self.n_levels)
        for grp in self._groups:
            self._check_reachable(grp)
        # fixed after construction; the mutation reads them for every child
        self._keeps_budget = all(g.uniform_steps or g.hi is None for g in self._groups)
        self._max_level_list: list[int] = self.max_level.tolist()
        self._group_of_list: list[int] = self.group_of.tolist()

    # ------------------------------------------------------------------ set-up
    def group_labels_in_order(self, groups: Any) -> list[Hashable]:
        if groups is None:
            return ["all"]
        if isinstance(groups, Mapping):
            return list(groups.keys())
        return list(dict.fromkeys(groups))

    def _make_group(self, g: int, label: Hashable, total: Any, tol: Any, grouped: bool) -> _Group:
        units = np.flatnonzero(self.group_of == g)
        if total is None:
            t = None
        elif isinstance(total, Mapping):
            if not grouped:
                raise ValueError("total is a mapping but no groups were given; pass groups= or a single number")
            if label not in total:
                raise ValueError(f"total has no budget for group {label!r}; give one for each of {self.group_labels}")
            t = _number(total[label], f"total[{label!r}]")
        else:
            t = _number(total, "total")
        if isinstance(tol, Mapping):
            tl = _number(tol.get(label, 0), f"tol[{label!r}]")
        else:
            tl = _number(tol, "tol")
        if tl < 0:
            raise ValueError(f"tol must be >= 0, got {tl}")
        if t is not None and not math.isfinite(t - tl):
            raise ValueError(f"total - tol overflows a float ({t:g} - {tl:g}); give smaller numbers")
        if isinstance(total, Mapping):
            extra = set(total) - set(self.group_labels)
            if extra:
                raise ValueError(
                    f"total names unknown groups {sorted(map(str, extra))}; groups are {self.group_labels}"
                )
        deltas = []
        for i in units:
            c = self._costs[i, : self.n_levels[i]]
            deltas.extend(np.diff(c).tolist())
        uniform = bool(deltas) and np.allclose(deltas, deltas[0], rtol=0, atol=_EPS * max(1.0, abs(deltas[0])))
        step = float(deltas[0]) if uniform else 0.0
        if deltas and any(d < -_EPS for d in deltas):
            # monotone costs keep repair simple; decreasing costs are rare but legal
            uniform = False
        # with equal steps a switch keeps the total: only single moves reach the band's other totals
        pos = [d for d in deltas if d > _EPS]
        band_moves = t is not None and bool(pos) and tl >= min(pos) * (1 - 1e-9)
        return _Group(
            label=label,
            units=units,
            lo=None if t is None else t - tl,
            hi=t,
            uniform_steps=uniform,
            step=step,
            band_moves=bool(band_moves),
        )

    def _check_reachable(self, grp: _Group) -> None:
        if grp.hi is None:
            return
        sub = [self._costs[i, : self.n_levels[i]] for i in grp.units]
        lo_total = float(sum(c.min() for c in sub))
        hi_total = float(sum(c.max() for c in sub))
        where = "" if self.n_groups == 1 and grp.label == "all" else f" of group {grp.label!r}"
        band = f"{grp.hi:g}" if grp.lo == grp.hi else f"[{grp.lo:g}, {grp.hi:g}]"
        assert grp.lo is not None
        if grp.hi < lo_total - _EPS or grp.lo > hi_total + _EPS:
            raise ValueError(
                f"budget{where} is infeasible: total {band} lies outside the reachable range "
                f"[{lo_total:g}, {hi_total:g}] of the total cost"
            )
        exactly = "exactly " if grp.lo == grp.hi else "in "
        widen = "use tol= to allow a band" if grp.lo == grp.hi else "widen the band (tol=)"
        if not grp.uniform_steps:
            # costs differ between steps: not every total in the range is reachable (subset sums)
            reach = _reachable_totals(sub)
            if reach is not None and not _hits(reach, grp.lo, grp.hi):
                raise ValueError(
                    f"budget{where} is infeasible: no assignment has total cost {exactly}{band} "
                    f"(reachable range [{lo_total:g}, {hi_total:g}], but not every value in it is reachable); " + widen
                )
        elif grp.step > 0:
            # totals are lo_total + m*step: the band must hold one of them
            m_hi = math.floor((grp.hi - lo_total) / grp.step + 1e-6)
            if lo_total + m_hi * grp.step < grp.lo - 1e-6 * max(1.0, abs(grp.hi)):
                raise ValueError(
                    f"budget{where} is infeasible: every level step costs {grp.step:g}, so totals are "
                    f"{lo_total:g} + m*{grp.step:g}; "
                    + (f"{band} is not one of them" if grp.lo == grp.hi else f"none lies in {band}")
                    + f"; {widen}"
                )

    # --------------------------------------------------------------- queries
    @property
    def costs(self) -> np.ndarray:
        """Per-unit, per-level costs as an ``(n, max_levels)`` array (nan-padded)."""
        return self._costs.copy()

    @property
    def n_groups(self) -> int:
        return len(self._groups)

    def group_units(self, label: Hashable) -> np.ndarray:
        """Indices of the units in group ``label``."""
        for grp in self._groups:
            if grp.label == label:
                return grp.units.copy()
        raise KeyError(label)

    def group_bounds(self) -> dict[Hashable, tuple[float | None, float | None]]:
        """``{group: (lowest, highest) allowed total}``; ``(None, None)`` if unconstrained."""
        return {g.label: (g.lo, g.hi) for g in self._groups}

    @property
    def switch_keeps_budget(self) -> bool:
        """True when every level switch within a group leaves its total unchanged."""
        return self._keeps_budget

    def cost(self, levels: Any) -> float:
        """Total cost of an assignment over all units.

        Raises:
            ValueError: ``levels`` is not one integer level in range per unit (see :meth:`validate`).
        """
        lv = self.validate(levels)
        return float(self._costs[np.arange(self.n_units), lv].sum())

    def group_totals(self, levels: Any) -> np.ndarray:
        """Total cost of each group, in the order of :attr:`group_labels`.

        Raises:
            ValueError: ``levels`` is not one integer level in range per unit (see :meth:`validate`).
        """
        return self._totals(self.validate(levels))

    def _totals(self, lv: np.ndarray) -> np.ndarray:
        per_unit = self._costs[np.arange(self.n_units), lv]
        return np.bincount(self.group_of, weights=per_unit, minlength=self.n_groups)

    def validate(self, levels: Any) -> np.ndarray:
        """Return ``levels`` as a new int64 array, or raise a one-line ``ValueError`` saying what is wrong.

        Accepted: a 1-D sequence of ``n_units`` integers (or integral floats) with
        ``0 <= levels[i] <= max_level[i]``. Refused: another shape (2-D, scalar, ragged),
        booleans, fractions, NaN, negative or too-high levels (never wrapped or clipped).
        """
        try:
            lv = np.asarray(levels)
        except (ValueError, TypeError, OverflowError):
            raise ValueError(
                f"an assignment needs a list of {self.n_units} integer levels, got {levels!r:.60}"
            ) from None
        if lv.shape != (self.n_units,):
            raise ValueError(f"an assignment needs {self.n_units} levels, got shape {lv.shape}")
        if lv.dtype.kind == "f":
            if not np.all(np.isfinite(lv)) or np.any(lv != np.round(lv)):
                raise ValueError("levels must be integers, got fractional or non-finite values")
        elif lv.dtype.kind not in "iu":
            raise ValueError(f"levels must be integers, got dtype {lv.dtype}")
        # range first, on the values as given: a cast to int64 must never wrap a huge value into range
        bad = np.flatnonzero((lv < 0) | (lv > self.max_level))
        if bad.size:
            i = int(bad[0])
            shown = lv[i].item()
            raise ValueError(f"unit {i} has level {shown}, outside 0..{self.max_level[i]}")
        return lv.astype(np.int64)

    def is_feasible(self, levels: Any) -> bool:
        """True when the levels are valid (see :meth:`validate`) and every group meets its budget.

        An invalid assignment (wrong shape, fractions, out of range) is not feasible: ``False``.
        """
        try:
            lv = self.validate(levels)
        except ValueError:
            return False
        return self._within_budget(lv)

    def _within_budget(self, lv: np.ndarray) -> bool:
        totals = self._totals(lv)
        for g, grp in enumerate(self._groups):
            if grp.hi is None:
                continue
            assert grp.lo is not None
            tol = _EPS * max(1.0, abs(grp.hi))
            if totals[g] > grp.hi + tol or totals[g] < grp.lo - tol:
                return False
        return True

    def uniform(self) -> np.ndarray | None:
        """The assignment with the same level everywhere (per group) that meets the budget, if any.

        Groups are handled separately, so "uniform" means one level per group;
        with several feasible levels the highest is returned. ``None`` when no
        group-wise uniform assignment is feasible.
        """
        out = np.zeros(self.n_units, dtype=np.int64)
        for grp in self._groups:
            top = int(self.max_level[grp.units].min())
            chosen = None
            for level in range(top, -1, -1):
                lv = out.copy()
                lv[grp.units] = level
                if grp.hi is None or self._group_ok(lv, grp):
                    chosen = level
                    break
            if chosen is None:
                return None
            out[grp.units] = chosen
        return out

    def _group_ok(self, lv: np.ndarray, grp: _Group) -> bool:
        if grp.hi is None:
            return True
        assert grp.lo is not None
        tot = float(self._costs[grp.units, lv[grp.units]].sum())
        tol = _EPS * max(1.0, abs(grp.hi))
        return grp.lo - tol <= tot <= grp.hi + tol

    # ------------------------------------------------------------ operators
    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """A random feasible assignment (not exactly uniform over the feasible set).

        Draws levels uniformly at random, then repairs each group into its budget
        by random single-level moves.
        """
        lv = rng.integers(0, self.n_levels)
        return self.repair(lv, rng)

    def repair(self, levels: Any, rng: np.random.Generator) -> np.ndarray:
        """Return a feasible assignment close to ``levels`` (few units changed).

        Each group over (under) its budget is lowered (raised) one level at a time
        on randomly chosen units, preferring moves that land inside the band; if
        that gets stuck (exact budgets with unequal costs) a dynamic program finds
        the feasible assignment that changes the fewest units.

        Raises:
            RuntimeError: if no feasible assignment could be constructed (only possible
                when the local moves get stuck and the group is too large to solve exactly:
                too many totals, or costs without a common step and over 65,536 assignments).
        """
        lv = np.array(levels, dtype=np.int64, copy=True)
        np.clip(lv, 0, self.max_level, out=lv)
        for grp in self._groups:
            if grp.hi is not None and not self._group_ok(lv, grp):
                self._repair_group(lv, grp, rng)
        return lv

    def _repair_group(self, lv: np.ndarray, grp: _Group, rng: np.random.Generator) -> None:
        assert grp.lo is not None and grp.hi is not None
        units = grp.units
        costs = self._costs
        total = float(costs[units, lv[units]].sum())
        tol = _EPS * max(1.0, abs(grp.hi))
        lo, hi = grp.lo - tol, grp.hi + tol
        if grp.uniform_steps and grp.step > 0:
            # every move changes the total by `step`: move exactly as many levels as needed
            if total > hi:
                m = -int(math.ceil((total - grp.hi) / grp.step - 1e-9))
            else:
                m = int(math.ceil((grp.lo - total) / grp.step - 1e-9))
            self._random_moves(lv, units, m, rng)
            return
        for _ in range(4 * int(self.max_level[units].sum()) + 16):
            if lo <= total <= hi:
                return
            direction = -1 if total > hi else 1
            if direction < 0:
                cand = units[lv[units] > 0]
                if cand.size == 0:
                    break
                delta = costs[cand, lv[cand] - 1] - costs[cand, lv[cand]]
            else:
                cand = units[lv[units] < self.max_level[units]]
                if cand.size == 0:
                    break
                delta = costs[cand, lv[cand] + 1] - costs[cand, lv[cand]]
            new = total + delta
            dist_now = (total - hi) if total > hi else (lo - total)
            dist_new = np.where(new > hi, new - hi, np.where(new < lo, lo - new, 0.0))
            inside = np.flatnonzero(dist_new == 0)
            better = np.flatnonzero(dist_new < dist_now - 1e-12)
            pick_from = inside if inside.size else better
            if pick_from.size == 0:
                break
            k = int(pick_from[rng.integers(pick_from.size)])
            u = cand[k]
            lv[u] += direction
            total = float(new[k])
        if lo <= total <= hi:
            return
        fixed = _min_change_assignment([costs[i, : self.n_levels[i]] for i in units], lv[units], grp.lo, grp.hi)
        if fixed is None:
            raise RuntimeError(
                f"could not repair group {grp.label!r} into its budget [{grp.lo:g}, {grp.hi:g}]: its costs are "
                "too many or have no common step to solve it exactly; allow a wider band with tol="
            )
        lv[units] = fixed

    def _random_moves(self, lv: np.ndarray, units: np.ndarray, m: int, rng: np.random.Generator) -> None:
        """Raise (m > 0) or lower (m < 0) ``|m|`` random levels among ``units``, one step each."""
        if m == 0:
            return
        room = (self.max_level[units] - lv[units]) if m > 0 else lv[units]
        if room.sum() < abs(m):
            raise RuntimeError("internal error: budget unreachable during repair")
        # choose |m| unit-level slots uniformly among the available ones
        slots = np.repeat(np.arange(units.size), room)
        picked = rng.choice(slots.size, size=abs(m), replace=False)
        counts = np.bincount(slots[picked], minlength=units.size)
        lv[units] += counts if m > 0 else -counts

    def switch(self, levels: np.ndarray, rng: np.random.Generator, n_switches: int = 1) -> np.ndarray:
        """Level-switch mutation: ``n_switches`` times raise one unit and lower another of its group.

        When every step in the group costs the same the budget is kept exactly;
        otherwise the group is repaired back into its band afterwards. In a band that
        holds several totals of equal steps, half the moves raise or lower one unit alone
        (then repair), so the search reaches every total in the band; so does a move from
        an assignment where no pair can switch (all levels lowest or highest in a band).
        Returns a new array; ``levels`` is not modified. Units that cannot move are
        skipped, so a space with no possible move returns an unchanged copy.
        """
        lv = levels.copy()
        n = self.n_units
        group_of = self._groups_index()
        single = False
        for _ in range(n_switches):
            pair = self._pick_pair(lv, rng, n, group_of)
            if pair is None:
                break
            i, j = pair
            if i >= 0:
                lv[i] += 1
            if j >= 0:
                lv[j] -= 1
            single = single or i < 0 or j < 0
        if single or not self.switch_keeps_budget:
            for grp in self._groups:
                if grp.hi is not None and (single or not grp.uniform_steps) and not self._group_ok(lv, grp):
                    self._repair_group(lv, grp, rng)
        return lv

    def _groups_index(self) -> list[np.ndarray]:
        return [g.units for g in self._groups]

    def _pick_pair(
        self, lv: np.ndarray, rng: np.random.Generator, n: int, members: list[np.ndarray]
    ) -> tuple[int, int] | None:
        ml = self._max_level_list
        gof = self._group_of_list
        # rejection sampling first: O(1) per try on typical spaces
        for _ in range(32):
            i = int(rng.integers(n))
            if lv[i] >= ml[i]:
                continue
            grp = self._groups[gof[i]]
            if grp.hi is None:
                return i, -1 if rng.random() < 0.5 else self._lower_any(lv, rng, grp.units, i)
            if grp.band_moves and rng.random() < 0.5:
                # a single move: raise i, or lower one unit of its group
                if rng.random() < 0.5:
                    return i, -1
                j = self._lower_any(lv, rng, grp.units, -1)
                if j >= 0:
                    return -1, j
                continue
            us = grp.units
            j = int(us[rng.integers(us.size)])
            if j != i and lv[j] > 0:
                return i, j
        # exact fallback: enumerate who can move
        raisable = np.flatnonzero(lv < self.max_level)
        rng.shuffle(raisable)
        for i in raisable[:64]:
            grp = self._groups[gof[i]]
            us = grp.units
            lowerable = us[(lv[us] > 0) & (us != i)]
            if lowerable.size:
                return int(i), int(lowerable[rng.integers(lowerable.size)])
            if grp.hi is None or grp.lo != grp.hi:
                return int(i), -1  # nothing to lower (all lowest): in a band, a raise alone (repaired after)
        # nothing to raise in a band (all highest): a lowering alone
        lowerable = np.flatnonzero((lv > 0) & np.array([g.lo != g.hi for g in self._groups])[self.group_of])
        if lowerable.size:
            return -1, int(lowerable[rng.integers(lowerable.size)])
        return None

    def _lower_any(self, lv: np.ndarray, rng: np.random.Generator, us: np.ndarray, i: int) -> int:
        j = int(us[rng.integers(us.size)])
        return j if (j != i and lv[j] > 0) else -1

    def enumerate_feasible(self, limit: int = 1_000_000) -> np.ndarray:
        """All feasible assignments as rows of an array (small spaces only).

        Raises:
            ValueError: if the unconstrained space has more than ``limit`` points.
        """
        size = int(np.prod(self.n_levels.astype(float)))
        if size > limit:
            raise ValueError(f"the space has {size:.3g} points, more than limit={limit}")
        grids = np.indices(tuple(int(k) for k in self.n_levels)).reshape(self.n_units, -1).T
        per_unit = self._costs[np.arange(self.n_units)[None, :], grids]
        ok = np.ones(len(grids), dtype=bool)
        for grp in self._groups:
            if grp.hi is None:
                continue
            assert grp.lo is not None
            tot = per_unit[:, grp.units].sum(axis=1)
            tol = _EPS * max(1.0, abs(grp.hi))
            ok &= (tot >= grp.lo - tol) & (tot <= grp.hi + tol)
        return grids[ok].astype(np.int64)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description (used to check that a journal belongs to this space)."""
        return {
            "n_levels": self.n_levels.tolist(),
            "costs": [self._costs[i, : self.n_levels[i]].tolist() for i in range(self.n_units)],
            "groups": [str(self.group_labels[g]) for g in self.group_of.tolist()],
            "bounds": {str(g.label): [g.lo, g.hi] for g in self._groups},
        }

    def __repr__(self) -> str:
        budget = ", ".join(
            f"{g.label}: {g.hi:g}" + ("" if g.lo == g.hi else f" (band {g.lo:g}..{g.hi:g})")
            for g in self._groups
            if g.hi is not None
        )
        return f"LevelSpace(n_units={self.n_units}, levels={_short(self.n_levels)}, budget={{{budget or 'none'}}})"


# ---------------------------------------------------------------- helpers
def _short(a: np.ndarray) -> str:
    u = np.unique(a)
    return str(int(u[0])) if u.size == 1 else f"{int(a.min())}..{int(a.max())}"


def _number(x: Any, what: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
        raise ValueError(f"{what} must be a number, got {x!r}")
    v = float(x)
    if not math.isfinite(v):
        raise ValueError(f"{what} must be finite, got {x!r}")
    return v


def _parse_levels(n_levels: Any, n_units: int | None) -> np.ndarray:
    if isinstance(n_levels, (int, np.integer)) and not isinstance(n_levels, bool):
        if n_units is None:
            raise ValueError("n_levels is a single number: give n_units as well")
        if not isinstance(n_units, (int, np.integer)) or isinstance(n_units, bool) or not 1 <= n_units <= MAX_UNITS:
            raise ValueError(f"n_units must be an integer in 1..{MAX_UNITS}, got {n_units!r}")
        if n_levels > MAX_LEVELS:
            raise ValueError(f"n_levels must be in 1..{MAX_LEVELS} (levels per unit), got {n_levels!r}")
        arr = np.full(int(n_units), max(int(n_levels), 0), dtype=np.int64)
    else:
        try:
            arr = np.asarray(n_levels)
        except Exception as exc:  # pragma: no cover - numpy message is enough
            raise ValueError(f"n_levels must be an int or a list of ints: {exc}") from None
        if arr.ndim != 1 or arr.size == 0 or arr.dtype.kind not in "iu":
            raise ValueError(f"n_levels must be an int or a non-empty list of ints, got {n_levels!r}")
        if n_units is not None and (not isinstance(n_units, (int, np.integer)) or isinstance(n_units, bool)):
            raise ValueError(f"n_units must be an integer (or left out with a list of n_levels), got {n_units!r}")
        if arr.size > MAX_UNITS:
            raise ValueError(f"n_levels lists {arr.size} units, more than {MAX_UNITS}")
        if np.any(arr > MAX_LEVELS):
            raise ValueError(f"a unit has {arr.max()} levels, more than {MAX_LEVELS} (levels per unit)")
        arr = arr.astype(np.int64)
        if n_units is not None and n_units != arr.size:
            raise ValueError(f"n_units={n_units!r} but n_levels lists {arr.size} units")
    if np.any(arr < 1):
        raise ValueError("every unit needs at least one level (n_levels >= 1)")
    if arr.size * int(arr.max()) > MAX_CELLS:
        raise ValueError(
            f"{arr.size} units of up to {arr.max()} levels make a cost table of more than {MAX_CELLS} cells; "
            "use fewer units or levels"
        )
    return arr


def _parse_costs(costs: Any, n_levels: np.ndarray) -> np.ndarray:
    n, width = n_levels.size, int(n_levels.max())
    out = np.full((n, width), np.nan)
    if costs is None:
        for i, k in enumerate(n_levels):
            out[i, :k] = np.arange(k)
        return out
    if len(costs) != n:
        raise ValueError(f"costs needs one row per unit ({n}), got {len(costs)}")
    for i, row in enumerate(costs):
        r = np.asarray(row, dtype=float)
        if r.ndim != 1 or r.size < n_levels[i]:
            raise ValueError(f"costs[{i}] needs {n_levels[i]} values (one per level), got {r.size}")
        r = r[: n_levels[i]]
        if not np.all(np.isfinite(r)):
            raise ValueError(f"costs[{i}] must be finite numbers")
        out[i, : n_levels[i]] = r
    # every total and every difference of totals must be a finite float: bound 2 * Σ max |cost|
    with np.errstate(over="ignore"):
        bound = 2.0 * float(np.sum(np.nanmax(np.abs(out), axis=1)))
    if not math.isfinite(bound):
        raise ValueError("costs are too large: their total overflows a float (inf); rescale them (e.g. MB, not bytes)")
    return out


def _parse_groups(groups: Any, n: int) -> np.ndarray:
    if groups is None:
        return np.zeros(n, dtype=np.int64)
    gof = np.full(n, -1, dtype=np.int64)
    if isinstance(groups, Mapping):
        for g, (label, idx) in enumerate(groups.items()):
            for u in idx:
                u = int(u)
                if not 0 <= u < n:
                    raise ValueError(f"group {label!r} names unit {u}, outside 0..{n - 1}")
                if gof[u] >= 0:
                    raise ValueError(f"unit {u} is in two groups; groups must partition the units")
                gof[u] = g
        missing = np.flatnonzero(gof < 0)
        if missing.size:
            raise ValueError(f"units {missing[:8].tolist()} are in no group; groups must partition the units")
        return gof
    labels = list(groups)
    if len(labels) != n:
        raise ValueError(f"groups needs one label per unit ({n}), got {len(labels)}")
    index = {lab: g for g, lab in enumerate(dict.fromkeys(labels))}
    return np.array([index[lab] for lab in labels], dtype=np.int64)


def _increments(costs: np.ndarray, n_levels: np.ndarray) -> np.ndarray:
    return np.diff(costs, axis=1)


def _integer_scale(rows: list[np.ndarray]) -> tuple[list[np.ndarray], float] | None:
    """Rescale cost rows (relative to each row's minimum) to small integers, if they are commensurable."""
    vals = np.concatenate([r - r.min() for r in rows])
    nz = np.abs(vals[np.abs(vals) > _EPS])
    if nz.size == 0:
        return [np.zeros_like(r, dtype=np.int64) for r in rows], 1.0
    if not np.allclose(nz, np.round(nz), atol=1e-9):
        # try a common rational step: scale so the smallest non-zero difference is 1
        scale = float(nz.min())
        scaled = nz / scale
        if not np.allclose(scaled, np.round(scaled), atol=1e-6):
            return None
    else:
        scale = 1.0
    ints = [np.round((r - r.min()) / scale).astype(np.int64) for r in rows]
    g = reduce(math.gcd, [int(x) for r in ints for x in r if x], 0) or 1
    return [r // g for r in ints], scale * g


def _reachable_totals(rows: list[np.ndarray]) -> tuple[np.ndarray, float, float] | None:
    """Reachable totals as a boolean table over the integer grid, or None if too large."""
    scaled = _integer_scale(rows)
    if scaled is None:
        return None
    ints, unit = scaled
    span = int(sum(int(r.max()) for r in ints))
    if span > _DP_RANGE_LIMIT:
        return None
    reach = np.zeros(span + 1, dtype=bool)
    reach[0] = True
    for r in ints:
        nxt = np.zeros_like(reach)
        for c in np.unique(r):
            nxt[c:] |= reach[: span + 1 - c]
        reach = nxt
    base = float(sum(r.min() for r in rows))
    return reach, base, unit


def _hits(reach: tuple[np.ndarray, float, float], lo: float, hi: float) -> bool:
    table, base, unit = reach
    idx = np.flatnonzero(table)
    totals = base + idx * unit
    tol = 1e-6 * max(1.0, abs(hi))
    return bool(np.any((totals >= lo - tol) & (totals <= hi + tol)))


def _min_change_assignment(rows: list[np.ndarray], current: np.ndarray, lo: float, hi: float) -> np.ndarray | None:
    """Levels meeting ``lo <= total <= hi`` that differ from ``current`` in the fewest units.

    A dynamic program over the integer-scaled totals; for costs without a common step (or too
    many totals), every assignment of a small group is tried instead. ``None`` when neither applies.
    """
    scaled = _integer_scale(rows)
    if scaled is None:
        return _min_change_by_enumeration(rows, current, lo, hi)
    ints, unit = scaled
    span = int(sum(int(r.max()) for r in ints))
    if span * len(rows) > 50_000_000:
        return _min_change_by_enumeration(rows, current, lo, hi)
    base = float(sum(r.min() for r in rows))
    big = np.iinfo(np.int32).max // 2
    changes = np.full(span + 1, big, dtype=np.int64)
    changes[0] = 0
    choice = np.zeros((len(rows), span + 1), dtype=np.int16)
    for u, r in enumerate(ints):
        nxt = np.full_like(changes, big)
        best_lv = np.zeros(span + 1, dtype=np.int16)
        for level, c in enumerate(r):
            cand = np.full_like(changes, big)
            cand[c:] = changes[: span + 1 - c] + (0 if level == current[u] else 1)
            better = cand < nxt
            nxt[better] = cand[better]
            best_lv[better] = level
        changes, choice[u] = nxt, best_lv
    totals = base + np.arange(span + 1) * unit
    tol = 1e-6 * max(1.0, abs(hi))
    ok = (totals >= lo - tol) & (totals <= hi + tol) & (changes < big)
    if not ok.any():
        return None
    t = int(np.flatnonzero(ok)[np.argmin(changes[ok])])
    out = np.zeros(len(rows), dtype=np.int64)
    for u in range(len(rows) - 1, -1, -1):
        level = int(choice[u, t])
        out[u] = level
        t -= int(ints[u][level])
    return out


_ENUMERATION_LIMIT = 1 << 16  # assignments of one group tried by _min_change_by_enumeration


def _min_change_by_enumeration(rows: list[np.ndarray], current: np.ndarray, lo: float, hi: float) -> np.ndarray | None:
    """Every assignment of a small group, the one meeting the band with the fewest changed units (first on ties)."""
    if math.prod(len(r) for r in rows) > _ENUMERATION_LIMIT:
        return None
    grids = np.meshgrid(*[np.arange(len(r)) for r in rows], indexing="ij")
    levels = np.stack([g.reshape(-1) for g in grids], axis=1)
    totals = sum(np.asarray(r, dtype=float)[levels[:, u]] for u, r in enumerate(rows))
    tol = 1e-6 * max(1.0, abs(hi))
    ok = np.flatnonzero((totals >= lo - tol) & (totals <= hi + tol))
    if ok.size == 0:
        return None
    changes = (levels[ok] != np.asarray(current)[None, :]).sum(axis=1)
    return levels[ok[int(np.argmin(changes))]].astype(np.int64)
