"""A cheap additive surrogate of the fitness, fitted on every evaluation an optimizer was told.

Model: ``f(x) ≈ c_b + Σ_i w[i, x_i] + α · prior(x)`` where ``c_b`` is a free offset per
*batch* (all candidates of one selection step share a data sample, and the sample's
difficulty moves all their values together), ``w`` are per-unit, per-level effects and
``prior(x) = Σ_i p[i, x_i]`` is an optional per-unit error estimate from the problem
(single-drop KLs, normalised layer errors) whose scale ``α`` is learnt.

The per-batch offsets are eliminated by centring each batch: only differences between
candidates *evaluated on the same data* inform the fit, which is what makes it robust to
fidelity noise. Rows are weighted by fidelity (a value on ``f`` tokens has variance ∝
``1/f``) and by age (older batches fade by ``decay`` per generation, so that on a
non-additive objective the fit tracks the neighbourhood of the current parent).

The fit is ridge regression through accumulated normal equations, solved by a fixed
number of conjugate-gradient iterations warm-started from the last solution: the cost
per batch is ``O(m · p²)`` for ``m`` rows and ``p = Σ_i K_i`` parameters, per fit
``O(iterations · p²)``; everything is deterministic given the rows told.

The surrogate only *ranks* candidates so that an optimizer spends its evaluations on the
promising ones; it never decides who survives (that takes a real evaluation).
"""

from __future__ import annotations

import numpy as np

from .space import LevelSpace

__all__ = ["AdditiveSurrogate"]


class AdditiveSurrogate:
    """Additive (per unit-level) ridge surrogate with per-batch offsets.

    Args:
        space: the level space (defines the one-hot layout).
        prior: optional ``(n_units, max_levels)`` error estimates; level entries past a
            unit's level count are ignored.
        ridge: L2 penalty on ``w`` (relative to the mean diagonal of the normal matrix).
        decay: weight kept by past batches per :meth:`age` call (1.0: never forget).
        iterations: conjugate-gradient iterations per :meth:`fit`.
    """

    def __init__(
        self,
        space: LevelSpace,
        *,
        prior: np.ndarray | None = None,
        ridge: float = 1e-5,
        decay: float = 0.97,
        iterations: int = 30,
    ) -> None:
        self.space = space
        n_levels = space.n_levels.astype(np.int64)
        self._offset = np.concatenate([[0], np.cumsum(n_levels)[:-1]]).astype(np.int64)
        self._units = np.arange(space.n_units)
        self.n_params = int(n_levels.sum())
        self.prior: np.ndarray | None = None
        if prior is not None:
            p = np.asarray(prior, dtype=float)
            width = int(n_levels.max())
            if p.ndim != 2 or p.shape[0] != space.n_units or p.shape[1] < width:
                raise ValueError(f"prior must have shape ({space.n_units}, {width}), got {p.shape}")
            p = np.where(np.isfinite(p), p, 0.0)[:, :width]
            scale = float(np.abs(p).max()) or 1.0
            self.prior = p / scale  # unit scale: α carries the size
        size = self.n_params + (1 if self.prior is not None else 0)
        self._a = np.zeros((size, size))
        self._b = np.zeros(size)
        self._coef: np.ndarray = np.zeros(size)
        if self.prior is not None:
            self._coef[-1] = 1.0  # before any data the prior is the model
        self.ridge = float(ridge)
        self.decay = float(decay)
        self.iterations = int(iterations)
        self.n_rows = 0  # informative rows told (centred batches of >= 2 distinct points)
        self._dirty = False

    # ----------------------------------------------------------------- data
    def _features(self, levels: np.ndarray) -> np.ndarray:
        lv = np.atleast_2d(np.asarray(levels, dtype=np.int64))
        x = np.zeros((lv.shape[0], self._a.shape[0]))
        rows = np.repeat(np.arange(lv.shape[0]), lv.shape[1])
        x[rows, (self._offset[None, :] + lv).ravel()] = 1.0
        if self.prior is not None:
            x[:, -1] = self.prior[self._units[None, :], lv].sum(axis=1)
        return x

    def add_batch(self, levels: np.ndarray, values: np.ndarray, weight: float = 1.0) -> None:
        """Tell the values of one batch (candidates evaluated on the same data sample).

        Non-finite values (failed evaluations) are left out. A batch with fewer than two
        finite values carries no information once its offset is removed and is ignored.
        """
        vals = np.asarray(values, dtype=float)
        ok = np.isfinite(vals)
        if ok.sum() < 2:
            return
        x = self._features(np.asarray(levels)[ok])
        y = vals[ok]
        x = x - x.mean(axis=0)
        y = y - y.mean()
        w = float(weight)
        self._a += w * (x.T @ x)
        self._b += w * (x.T @ y)
        self.n_rows += int(ok.sum()) - 1
        self._dirty = True

    def age(self) -> None:
        """One generation passed: past batches weigh ``decay`` times less."""
        if self.decay < 1.0:
            self._a *= self.decay
            self._b *= self.decay

    # ------------------------------------------------------------------ fit
    def fit(self, exact: bool = False) -> None:
        """Refit: conjugate gradients on the ridge normal equations, warm-started, or with
        ``exact`` a direct solve (``O(p³)``: after a block of many new rows, e.g. probes)."""
        if not self._dirty:
            return
        self._dirty = False
        diag = np.diag(self._a)
        lam = self.ridge * (float(diag.mean()) if diag.size and diag.mean() > 0 else 1.0)
        a = self._a
        if exact:
            self._coef = np.asarray(np.linalg.solve(a + lam * np.eye(a.shape[0]), self._b), dtype=float)
            return
        x = self._coef
        r = self._b - (a @ x + lam * x)
        p = r.copy()
        rs = float(r @ r)
        tol = 1e-20 * max(1.0, float(self._b @ self._b))
        for _ in range(self.iterations):
            if rs <= tol:
                break
            ap = a @ p + lam * p
            denom = float(p @ ap)
            if denom <= 0:
                break
            step = rs / denom
            x = x + step * p
            r = r - step * ap
            rs_new = float(r @ r)
            p = r + (rs_new / rs) * p
            rs = rs_new
        self._coef = x

    # ------------------------------------------------------------ predictions
    def predict(self, levels: np.ndarray) -> np.ndarray:
        """Predicted values up to a common constant (only differences are meaningful)."""
        lv = np.atleast_2d(np.asarray(levels, dtype=np.int64))
        out = self._coef[: self.n_params][self._offset[None, :] + lv].sum(axis=1)
        if self.prior is not None:
            out = out + self._coef[-1] * self.prior[self._units[None, :], lv].sum(axis=1)
        return out

    def unit_table(self) -> np.ndarray:
        """``(n_units, max_levels)`` predicted per-unit, per-level values (``inf`` past a unit's levels)."""
        width = int(self.space.n_levels.max())
        out = np.full((self.space.n_units, width), np.inf)
        for i in range(self.space.n_units):
            k = int(self.space.n_levels[i])
            out[i, :k] = self._coef[self._offset[i] : self._offset[i] + k]
            if self.prior is not None:
                out[i, :k] += self._coef[-1] * self.prior[i, :k]
        return out
