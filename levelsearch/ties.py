"""Tied units: units that always share one level, made a property of the search space by reduction.

An engine often runs several units with one scheme: vLLM fuses q/k/v and gate/up into one layer, llama.cpp
stores all experts of a layer and projection in one tensor of one type, fused mixture-of-experts kernels take
one scheme per layer's experts. :class:`TiedSpace` is a :class:`~levelsearch.space.LevelSpace` whose units are
the **tie groups** of a member space: a group's level ``l`` puts every member at level ``l``, and costs the sum
of its members' costs at ``l`` (a group has the levels all its members have). Every optimizer, baseline and
surrogate sees only group assignments, so each assignment it proposes respects the ties and the member budget
(the totals are the same sums); :meth:`TiedSpace.expand` turns one into member levels, :meth:`TiedSpace.reduce`
the other way (a member assignment that breaks a tie is refused).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from .space import LevelSpace

__all__ = ["TiedSpace", "member_levels"]


class TiedSpace(LevelSpace):
    """The level space over tie groups of ``members`` (see the module docstring).

    Args:
        members: the space of the member units (its costs, budget and budget groups).
        ties: one hashable label per member unit (units with one label share one level), or a list of
            groups of member indices, each a list (units in no group stay alone).

    Raises:
        ValueError: a tie across two budget groups, a label list of the wrong length, or a unit in two groups.
    """

    def __init__(self, members: LevelSpace, ties: Sequence[Hashable] | Sequence[Sequence[int]]) -> None:
        self.members = members
        self.tie_of = _tie_index(ties, members.n_units)
        n_groups = int(self.tie_of.max()) + 1 if self.tie_of.size else 0
        self.group_members = [np.flatnonzero(self.tie_of == g) for g in range(n_groups)]
        costs = members.costs
        n_levels = [int(members.n_levels[m].min()) for m in self.group_members]
        group_costs = [costs[m, :k].sum(axis=0).tolist() for m, k in zip(self.group_members, n_levels)]
        total, tol, labels = members.total, members.tol, None
        if isinstance(members.total, Mapping):
            total, tol, labels = _merged_budgets(members, self.group_members)
        super().__init__(n_levels, costs=group_costs, total=total, tol=tol, groups=labels)

    @property
    def n_members(self) -> int:
        return int(self.members.n_units)

    def expand(self, levels: Any) -> np.ndarray:
        """Member levels of a group assignment (``levels`` of :attr:`n_units` entries, checked)."""
        return self.validate(levels)[self.tie_of]

    def reduce(self, levels: Any) -> np.ndarray:
        """The group assignment of member ``levels``.

        Raises:
            ValueError: members of one tie group at different levels (the first such group is named).
        """
        lv = self.members.validate(levels)
        out = lv[[int(m[0]) for m in self.group_members]]
        broken = [g for g, m in enumerate(self.group_members) if np.any(lv[m] != out[g])]
        if broken:
            m = self.group_members[broken[0]]
            raise ValueError(f"units {m.tolist()} are tied but at levels {lv[m].tolist()}")
        return out

    def reduce_values(self, values: np.ndarray) -> np.ndarray:
        """Per-group, per-level sums of per-member, per-level ``values`` (``n_members × K``, nan-padded): the
        additive estimates of a group (errors, KL estimates) from its members'."""
        v = np.asarray(values, dtype=float)
        k = int(self.n_levels.max()) if self.n_units else 0
        out = np.full((self.n_units, k), np.nan)
        for g, m in enumerate(self.group_members):
            n = int(self.n_levels[g])
            out[g, :n] = v[m, :n].sum(axis=0)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "ties": self.tie_of.tolist(), "members": self.members.to_dict()}


def _merged_budgets(
    members: LevelSpace, groups: list[np.ndarray]
) -> tuple[dict[Hashable, float], dict[Hashable, float] | float, list[Hashable]]:
    """Budget groups of the tie groups: member budget groups a tie joins are merged into one, whose total (and
    band) is the sum of theirs (an exact budget per group of equal-size units stays exact over their union)."""
    parent = list(range(len(members.group_labels)))

    def root(a: int) -> int:
        while parent[a] != a:
            a = parent[a]
        return a

    for m in groups:
        own = sorted({int(members.group_of[i]) for i in m})
        for b in own[1:]:
            parent[root(b)] = root(own[0])
    label = [str(members.group_labels[root(b)]) for b in range(len(parent))]
    totals = members.total if isinstance(members.total, Mapping) else {}
    tols = members.tol if isinstance(members.tol, Mapping) else None
    total: dict[Hashable, float] = {}
    tol: dict[Hashable, float] = {}
    for b, lab in enumerate(members.group_labels):
        if lab in totals and totals[lab] is not None:
            total[label[b]] = total.get(label[b], 0.0) + float(totals[lab])
        tol[label[b]] = tol.get(label[b], 0.0) + float(tols.get(lab, 0.0) if tols is not None else 0.0)
    labels: list[Hashable] = [label[int(members.group_of[int(m[0])])] for m in groups]
    return total, (tol if tols is not None else float(members.tol)), labels  # type: ignore[arg-type]


def member_levels(space: LevelSpace, levels: Any) -> np.ndarray:
    """``levels`` checked against ``space`` and, for a :class:`TiedSpace`, expanded to member levels (member levels
    that keep the ties are taken as they are: :meth:`TiedSpace.reduce` checks them)."""
    if isinstance(space, TiedSpace):
        arr = np.asarray(levels)
        if arr.ndim == 1 and arr.size == space.n_members != space.n_units:
            return space.expand(space.reduce(arr))
        return space.expand(levels)
    return space.validate(levels)


def _tie_index(ties: Sequence[Any], n: int) -> np.ndarray:
    """A group index per member, groups numbered by their first member."""
    items = list(ties)
    if items and all(
        isinstance(t, (list, np.ndarray)) and all(isinstance(x, (int, np.integer)) for x in t) for t in items
    ):
        label = list(range(n))
        seen: set[int] = set()
        for g in items:
            first = None
            for i in (int(x) for x in g):
                if not 0 <= i < n or i in seen:
                    raise ValueError(f"tie groups: unit {i} is out of range 0..{n - 1} or in two groups")
                seen.add(i)
                first = i if first is None else first
                label[i] = first
        items = label
    if len(items) != n:
        raise ValueError(f"ties need one label per unit ({n}), got {len(items)}")
    index: dict[Hashable, int] = {}
    return np.array([index.setdefault(t, len(index)) for t in items], dtype=np.int64)
