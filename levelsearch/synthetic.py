"""Synthetic problems with known optima, for benchmarking optimizers.

- ``linear``: additive per-unit errors; the optimum is exact (knapsack DP).
- ``interacting``: additive errors plus pairwise couplings between units, so
  per-unit errors do not add up; the optimum is exact by enumeration (small
  spaces) or by mixed-integer programming (two levels), else unknown.
- ``noisy``: any problem plus Gaussian noise whose scale shrinks with fidelity.
- ``residual-net``: a small real numpy residual network whose blocks are dropped
  or magnitude-pruned; fitness = KL from the dense net's outputs; fidelity =
  batch size.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np

from .additive import solve_additive
from .problem import Problem, make_problem, register_problem
from .space import LevelSpace

__all__ = ["LinearProblem", "InteractingProblem", "NoisyProblem", "ResidualNetProblem"]


#: size limits of the synthetic problems: beyond them a typo (``width: 1000000``) would fill the memory
MAX_UNITS = 1_000_000
MAX_LEVELS = 100_000
MAX_CELLS = 10_000_000  # n_units x n_levels error table
MAX_NET_FLOATS = 50_000_000  # residual-net weights (all variants) and input pool: 400 MB of float64


def _int_in(value: Any, name: str, lo: int, hi: int, kind: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
        raise ValueError(f"{kind}: {name} must be an integer in {lo}..{hi}, got {value!r}")
    return int(value)


def _number_in(value: Any, name: str, lo: float, hi: float, kind: str) -> float:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or not lo <= value <= hi:
        raise ValueError(f"{kind}: {name} must be a finite number in [{lo:g}, {hi:g}], got {value!r}")
    return float(value)


def _check_table(n_units: Any, n_levels: Any, kind: str) -> None:
    n = _int_in(n_units, "n_units", 1, MAX_UNITS, kind)
    k = _int_in(n_levels, "n_levels", 1, MAX_LEVELS, kind)
    if n * k > MAX_CELLS:
        raise ValueError(
            f"{kind}: n_units x n_levels = {n * k} is over the limit {MAX_CELLS}; use fewer units or levels"
        )


def _default_total(n_units: int, n_levels: int) -> int:
    return (n_units * (n_levels - 1)) // 4


def _errors(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    # increasing per-level errors with unit-specific scales (a few sensitive units)
    scale = rng.lognormal(0.0, 1.0, size=(n, 1))
    inc = rng.gamma(2.0, 0.5, size=(n, k - 1)) * scale
    # later levels hurt more (convex): compression error grows faster than linearly
    inc *= np.linspace(1.0, 2.0, k - 1)[None, :] if k > 1 else 1.0
    return np.concatenate([np.zeros((n, 1)), np.cumsum(inc, axis=1)], axis=1)


class _Synthetic(Problem):
    def __init__(self, space: LevelSpace, params: dict[str, Any]) -> None:
        super().__init__(space)
        self.params = params
        self._optimum_done = False
        self._optimum: float | None = None
        self._optimum_levels: np.ndarray | None = None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **self.params}

    def true_value(self, levels: np.ndarray) -> float | None:
        return float(self.evaluate(levels))

    # optimum is computed lazily: it can take seconds
    @property
    def optimum(self) -> float | None:  # type: ignore[override]
        self._ensure_optimum()
        return self._optimum

    @property
    def optimum_levels(self) -> np.ndarray | None:  # type: ignore[override]
        self._ensure_optimum()
        return self._optimum_levels

    def _ensure_optimum(self) -> None:
        if not self._optimum_done:
            self._optimum_done = True
            res = self._solve()
            if res is not None:
                self._optimum_levels, self._optimum = res[0], float(res[1])

    def _solve(self) -> tuple[np.ndarray, float] | None:
        return None

    def _enumerate(self, limit: int = 200_000) -> tuple[np.ndarray, float] | None:
        try:
            pts = self.space.enumerate_feasible(limit=limit)
        except ValueError:
            return None
        if len(pts) == 0:
            return None
        vals = np.array([self.evaluate(p) for p in pts])
        k = int(np.argmin(vals))
        return pts[k], float(vals[k])


class LinearProblem(_Synthetic):
    """Additive errors: ``f(levels) = sum_i e[i, levels[i]]``, ``e[i, 0] = 0``, increasing in the level.

    Args:
        n_units: number of units.
        n_levels: levels per unit.
        total: budget on the sum of levels (exact); default a quarter of the maximum.
        seed: seed of the random errors.
    """

    name = "linear"

    def __init__(self, *, n_units: int = 64, n_levels: int = 2, total: int | None = None, seed: int = 0) -> None:
        _check_table(n_units, n_levels, "linear")
        total = _default_total(n_units, n_levels) if total is None else total
        space = LevelSpace(n_levels, n_units=n_units, total=total)
        super().__init__(space, {"n_units": n_units, "n_levels": n_levels, "total": total, "seed": seed})
        self.errors = _errors(np.random.default_rng(seed), n_units, n_levels)
        self._rows = np.arange(n_units)

    def evaluate(self, levels: np.ndarray, fidelity: int | None = None, sample: int | None = None) -> float:
        return float(self.errors[self._rows, levels].sum())

    def _solve(self) -> tuple[np.ndarray, float] | None:
        return solve_additive(self.space, self.errors)


class InteractingProblem(_Synthetic):
    """Additive errors plus pairwise couplings: per-unit errors do not add up.

    ``f = sum_i e[i, l_i] + sum_(i,j) J_ij * g_i * g_j`` with ``g_i = l_i / (K - 1)``.
    Neighbouring units (i, i+1) are coupled positively (compressing two adjacent
    units hurts more than the sum: the error-monotonicity failure EvoPress
    targets); a few random pairs are coupled with either sign.

    Args:
        n_units, n_levels, total, seed: as for ``linear``.
        coupling: strength of the couplings relative to the mean top-level error.
        random_pairs: number of extra random pairs (default ``n_units // 2``).
    """

    name = "interacting"

    def __init__(
        self,
        *,
        n_units: int = 64,
        n_levels: int = 2,
        total: int | None = None,
        seed: int = 0,
        coupling: float = 1.0,
        random_pairs: int | None = None,
    ) -> None:
        _check_table(n_units, n_levels, "interacting")
        _number_in(coupling, "coupling", -1e6, 1e6, "interacting")
        if random_pairs is not None:
            _int_in(random_pairs, "random_pairs", 0, 10 * MAX_UNITS, "interacting")
        total = _default_total(n_units, n_levels) if total is None else total
        space = LevelSpace(n_levels, n_units=n_units, total=total)
        random_pairs = n_units // 2 if random_pairs is None else random_pairs
        super().__init__(
            space,
            {
                "n_units": n_units,
                "n_levels": n_levels,
                "total": total,
                "seed": seed,
                "coupling": coupling,
                "random_pairs": random_pairs,
            },
        )
        rng = np.random.default_rng(seed)
        self.errors = _errors(rng, n_units, n_levels)
        mean_top = float(self.errors[:, -1].mean())
        pairs = [(i, i + 1) for i in range(n_units - 1)]
        weights = list(rng.uniform(0.5, 1.5, size=n_units - 1) * coupling * mean_top)
        if n_units > 2 and random_pairs > 0:
            a = rng.integers(0, n_units, size=random_pairs)
            b = (a + rng.integers(2, n_units, size=random_pairs)) % n_units
            pairs += list(zip(a.tolist(), b.tolist()))
            weights += list(rng.normal(0.0, 0.75, size=random_pairs) * coupling * mean_top)
        self.pairs = np.array(pairs, dtype=np.int64).reshape(-1, 2)
        self.weights = np.array(weights, dtype=float)
        self._rows = np.arange(n_units)
        self._k = max(1, n_levels - 1)

    def evaluate(self, levels: np.ndarray, fidelity: int | None = None, sample: int | None = None) -> float:
        lv = np.asarray(levels)
        g = lv / self._k
        inter = float((self.weights * g[self.pairs[:, 0]] * g[self.pairs[:, 1]]).sum())
        return float(self.errors[self._rows, lv].sum()) + inter

    def _solve(self) -> tuple[np.ndarray, float] | None:
        res = self._enumerate()
        if res is not None:
            return res
        if int(self.space.n_levels.max()) == 2:
            return self._milp()
        return None

    def _milp(self, time_limit: float = 60.0) -> tuple[np.ndarray, float] | None:
        """Exact optimum for two levels by linearising the products (HiGHS via scipy)."""
        from scipy.optimize import Bounds, LinearConstraint, milp

        n, m = self.space.n_units, len(self.pairs)
        c = np.concatenate([self.errors[:, 1] - self.errors[:, 0], self.weights])
        rows, lo, hi = [], [], []
        (blo, bhi) = next(iter(self.space.group_bounds().values()))
        if bhi is not None:
            rows.append(np.concatenate([np.ones(n), np.zeros(m)]))
            lo.append(blo)
            hi.append(bhi)
        for e, (i, j) in enumerate(self.pairs):
            w = self.weights[e]
            if w >= 0:  # y >= x_i + x_j - 1
                r = np.zeros(n + m)
                r[i], r[j], r[n + e] = -1, -1, 1
                rows.append(r)
                lo.append(-1)
                hi.append(np.inf)
            else:  # y <= x_i, y <= x_j
                for u in (i, j):
                    r = np.zeros(n + m)
                    r[u], r[n + e] = -1, 1
                    rows.append(r)
                    lo.append(-np.inf)
                    hi.append(0)
        res = milp(
            c,
            constraints=LinearConstraint(np.array(rows), lo, hi),
            integrality=np.concatenate([np.ones(n), np.zeros(m)]),
            bounds=Bounds(0, 1),
            options={"time_limit": time_limit},
        )
        if res.status != 0 or res.x is None:
            return None
        x = np.round(res.x[:n]).astype(np.int64)
        if not self.space.is_feasible(x):
            return None
        return x, self.evaluate(x)


class NoisyProblem(Problem):
    """Any problem plus Gaussian noise of standard deviation ``sigma / sqrt(fidelity)``.

    All candidates evaluated on the same sample share part of the noise (as
    candidates sharing a calibration minibatch do). ``true_value`` and the
    optimum are the base problem's.

    Args:
        base: config of the underlying problem, e.g. ``{"kind": "linear"}``.
        sigma: noise scale per unit of fidelity (a per-token loss spread).
        max_fidelity: the highest fidelity (used when a request gives none).
    """

    name = "noisy"
    uses_fidelity = True

    def __init__(self, *, base: dict[str, Any] | None = None, sigma: float = 20.0, max_fidelity: int = 65536) -> None:
        base = dict(base or {"kind": "linear"})
        self.base = make_problem(base)
        super().__init__(self.base.space)
        _number_in(sigma, "sigma", 0.0, 1e12, "noisy")
        _int_in(max_fidelity, "max_fidelity", 1, 10**15, "noisy")
        self.sigma = float(sigma)
        self.max_fidelity = self._pool = int(max_fidelity)
        self.params = {"base": base, "sigma": sigma, "max_fidelity": max_fidelity}

    @property
    def optimum(self) -> float | None:  # type: ignore[override]
        return self.base.optimum

    @property
    def optimum_levels(self) -> np.ndarray | None:  # type: ignore[override]
        return self.base.optimum_levels

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **self.params}

    def evaluate(self, levels: np.ndarray, fidelity: int | None = None, sample: int | None = None) -> float:
        fid = self._pool if fidelity is None else int(fidelity)
        if fid < 1:
            raise ValueError("fidelity must be >= 1")
        fid = min(fid, self._pool)
        s = 0 if sample is None else int(sample)
        lv = np.ascontiguousarray(levels, dtype=np.int64)
        h = int.from_bytes(hashlib.blake2b(lv.tobytes(), digest_size=8).digest(), "little")
        shared = np.random.default_rng([s, fid]).standard_normal()
        own = np.random.default_rng([s, fid, h]).standard_normal()
        z = (shared + own) / math.sqrt(2.0)
        return float(self.base.evaluate(lv)) + self.sigma / math.sqrt(fid) * float(z)

    def true_value(self, levels: np.ndarray) -> float | None:
        return float(self.base.evaluate(levels))


class ResidualNetProblem(_Synthetic):
    """Compress a small real residual network (numpy) and measure how far its outputs move.

    ``h = x W_in``; block ``b``: ``h = h + a_b * W2_b relu(W1_b norm(h))``;
    outputs ``softmax(h W_out)``. Fitness: mean KL(dense || compressed) over a
    batch of ``fidelity`` inputs drawn (by the sample seed) from a fixed pool of
    ``max_fidelity`` inputs.

    Args:
        n_blocks: residual blocks (units).
        width: hidden width.
        mode: ``"drop"`` (2 levels: kept, dropped) or ``"prune"`` (``n_levels``
            magnitude-pruning levels from 0 to ``max_sparsity``).
        n_levels: levels per block in prune mode.
        total: budget on the sum of levels (default: a quarter of the maximum).
        max_sparsity: the sparsity of the top pruning level.
        max_fidelity: size of the input pool.
        seed: seed of weights and inputs.
    """

    name = "residual-net"
    uses_fidelity = True

    def __init__(
        self,
        *,
        n_blocks: int = 16,
        width: int = 32,
        mode: str = "drop",
        n_levels: int = 5,
        total: int | None = None,
        max_sparsity: float = 0.9,
        max_fidelity: int = 1024,
        seed: int = 0,
    ) -> None:
        if mode not in ("drop", "prune"):
            raise ValueError(f"residual-net: mode must be 'drop' or 'prune', got {mode!r}")
        k = 2 if mode == "drop" else _int_in(n_levels, "n_levels", 1, 64, "residual-net")
        _check_net(n_blocks, width, k, max_fidelity)
        _number_in(max_sparsity, "max_sparsity", 0.0, 1.0, "residual-net")
        total = _default_total(n_blocks, k) if total is None else total
        space = LevelSpace(k, n_units=n_blocks, total=total)
        super().__init__(
            space,
            {
                "n_blocks": n_blocks,
                "width": width,
                "mode": mode,
                "n_levels": k,
                "total": total,
                "max_sparsity": max_sparsity,
                "max_fidelity": max_fidelity,
                "seed": seed,
            },
        )
        self.max_fidelity = self._pool = int(max_fidelity)
        rng = np.random.default_rng(seed)
        d = width
        self.x = rng.standard_normal((max_fidelity, d))
        self.w_in = rng.standard_normal((d, d)) / math.sqrt(d)
        self.w_out = rng.standard_normal((d, d)) / math.sqrt(d) * 3.0
        self.alpha = rng.lognormal(-0.5, 0.6, size=n_blocks)
        self.w1 = rng.standard_normal((n_blocks, d, 2 * d)) / math.sqrt(d)
        self.w2 = rng.standard_normal((n_blocks, 2 * d, d)) / math.sqrt(2 * d)
        sparsities = np.linspace(0.0, max_sparsity, k) if mode == "prune" else np.array([0.0, 1.0])
        self.sparsities = sparsities
        self._variants = [[(_prune(self.w1[b], s), _prune(self.w2[b], s)) for s in sparsities] for b in range(n_blocks)]
        self._dense_logp = self._forward(np.zeros(n_blocks, dtype=np.int64), self.x)

    def _forward(self, levels: np.ndarray, x: np.ndarray) -> np.ndarray:
        h = x @ self.w_in
        for b, lv in enumerate(levels):
            if self.params["mode"] == "drop" and lv == 1:
                continue
            w1, w2 = self._variants[b][int(lv)]
            z = (h - h.mean(1, keepdims=True)) / (h.std(1, keepdims=True) + 1e-6)
            h = h + self.alpha[b] * (np.maximum(z @ w1, 0.0) @ w2)
        logits = h @ self.w_out
        logits -= logits.max(1, keepdims=True)
        return logits - np.log(np.exp(logits).sum(1, keepdims=True))

    def _rows(self, fidelity: int | None, sample: int | None) -> np.ndarray:
        fid = self._pool if fidelity is None else min(int(fidelity), self._pool)
        if sample is None or fid >= self._pool:
            return np.arange(fid)
        return np.random.default_rng(int(sample)).choice(self._pool, size=fid, replace=False)

    def evaluate(self, levels: np.ndarray, fidelity: int | None = None, sample: int | None = None) -> float:
        rows = self._rows(fidelity, sample)
        logq = self._forward(np.asarray(levels), self.x[rows])
        logp = self._dense_logp[rows]
        return float((np.exp(logp) * (logp - logq)).sum(1).mean())

    def _solve(self) -> tuple[np.ndarray, float] | None:
        return self._enumerate(limit=70_000)


def _check_net(n_blocks: Any, width: Any, n_levels: int, max_fidelity: Any) -> None:
    kind = "residual-net"
    b = _int_in(n_blocks, "n_blocks", 1, 4096, kind)
    d = _int_in(width, "width", 1, 4096, kind)
    pool = _int_in(max_fidelity, "max_fidelity", 1, 1_000_000, kind)
    # two block matrices of d x 2d, kept once and per pruning level, plus the input pool and its outputs
    floats = b * 4 * d * d * (n_levels + 1) + 2 * pool * d
    if floats > MAX_NET_FLOATS:
        raise ValueError(
            f"{kind}: n_blocks={b}, width={d}, {n_levels} levels and max_fidelity={pool} need {floats:.3g} floats, "
            f"over the limit {MAX_NET_FLOATS:.0e} (400 MB); make width, n_blocks or max_fidelity smaller"
        )


def _prune(w: np.ndarray, sparsity: float) -> np.ndarray:
    if sparsity <= 0:
        return w
    k = int(round(sparsity * w.size))
    if k >= w.size:
        return np.zeros_like(w)
    thresh = np.partition(np.abs(w).ravel(), k)[k]
    return np.where(np.abs(w) >= thresh, w, 0.0)


register_problem("linear", LinearProblem)
register_problem("interacting", InteractingProblem)
register_problem("noisy", NoisyProblem)
register_problem("residual-net", ResidualNetProblem)
