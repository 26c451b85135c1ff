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

The fit is ridge regression on the normal equations ``A w = b``, solved by a fixed number
of conjugate-gradient iterations warm-started from the last solution. ``A`` is never formed:
a batch's centred rows are kept as sparse differences from its first row (``D``) plus one
rank-one correction (``X_c^T X_c = D^T D - m d̄ d̄^T``), so a batch of offspring a few level
switches from their parent adds a few nonzeros per row, and a product ``A v`` costs the
rows' nonzeros, not ``p²`` for ``p = Σ_i K_i`` parameters. Ageing is one scalar (past
rows' weights are divided by the decay so far); rows whose weight has faded below
``1e-12`` of the newest are dropped. The rows live in growing buffers, appended in place, so a fit
reads them where they are (no copy of what was told before), and five warm-started iterations a
generation are enough: more did not rank better on the committed journals
(``bench/surrogate_quality.py``). Everything is deterministic given the rows told.

The surrogate only *ranks* candidates so that an optimizer spends its evaluations on the
promising ones; it never decides who survives (that takes a real evaluation).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import sparse

from .space import LevelSpace

__all__ = ["AdditiveSurrogate"]

#: rows whose weight fell below this fraction of the newest row's are dropped
_FADED = 1e-12
#: an exact fit forms the dense normal matrix up to this many parameters (``8 p²`` bytes), else runs CG long
_DENSE_EXACT = 4096
#: conjugate-gradient iterations of an exact fit past ``_DENSE_EXACT``
_EXACT_ITERATIONS = 200


class AdditiveSurrogate:
    """Additive (per unit-level) ridge surrogate with per-batch offsets.

    Args:
        space: the level space (defines the one-hot layout).
        prior: optional ``(n_units, max_levels)`` error estimates; level entries past a
            unit's level count are ignored.
        ridge: L2 penalty on ``w`` (relative to the mean diagonal of the normal matrix).
        decay: weight kept by past batches per :meth:`age` call (1.0: never forget).
        iterations: conjugate-gradient iterations per :meth:`fit` (default 5; an exact fit of a space too
            large to solve densely runs 200).
    """

    def __init__(
        self,
        space: LevelSpace,
        *,
        prior: np.ndarray | None = None,
        ridge: float = 1e-5,
        decay: float = 0.97,
        iterations: int = 5,
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
        self._size = self.n_params + (1 if self.prior is not None else 0)
        # rows of the normal matrix's factor, A = Σ_r weight_r · row_r row_rᵀ, in growing CSR buffers
        # (appended in place, doubled when full; faded batches leave by moving the start)
        self._indices = np.zeros(1024, dtype=np.int32)
        self._data = np.zeros(1024)
        self._indptr = np.zeros(256, dtype=np.int64)  # row r's entries: [_indptr[r], _indptr[r + 1])
        self._weights = np.zeros(255)  # stored weight · _scale = true weight
        self._n_stored = 0  # rows in the buffers (dropped ones included)
        self._first = 0  # first live row
        self._batch_weight: list[float] = []  # each live batch's stored weight (its rows'), oldest first
        self._batch_rows: list[int] = []  # rows each live batch added
        self._batch_diag: list[float] = []  # each live batch's stored Σ_r weight_r ‖row_r‖²
        self._b = np.zeros(self._size)  # stored; true b = _b · _scale
        self._scale = 1.0
        self._coef: np.ndarray = np.zeros(self._size)
        if self.prior is not None:
            self._coef[-1] = 1.0  # before any data the prior is the model
        self.ridge = float(ridge)
        self.decay = float(decay)
        self.iterations = int(iterations)
        self.n_rows = 0  # informative rows told (centred batches of >= 2 distinct points)
        self._dirty = False

    # ----------------------------------------------------------------- data
    def _prior_sum(self, lv: np.ndarray) -> np.ndarray:
        assert self.prior is not None
        return np.asarray(self.prior[self._units[None, :], lv].sum(axis=1), dtype=float)

    def _centred_rows(self, lv: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """CSR ``(indptr, indices, data)`` of ``D`` (each row's one-hot features minus the first
        row's: a pair of ±1 per changed unit, then the prior's difference) followed by ``d̄``,
        the mean of ``D``'s rows."""
        m = lv.shape[0]
        r, u = np.nonzero(lv != lv[0][None, :])  # row-major: grouped by row
        n_prior = 0 if self.prior is None else 1
        starts = np.concatenate([[0], np.cumsum(2 * np.bincount(r, minlength=m) + n_prior)])
        indices = np.empty(int(starts[-1]), dtype=np.int64)
        data = np.empty(int(starts[-1]))
        pos = starts[r] + 2 * _rank_within(r)
        indices[pos], indices[pos + 1] = self._offset[u] + lv[r, u], self._offset[u] + lv[0, u]
        data[pos], data[pos + 1] = 1.0, -1.0
        if self.prior is not None:
            pr = self._prior_sum(lv)
            indices[starts[1:] - 1], data[starts[1:] - 1] = self._size - 1, pr - pr[0]
        mean = np.bincount(indices, weights=data, minlength=self._size) / m
        nz = np.flatnonzero(mean)
        return (
            np.concatenate([starts, [starts[-1] + nz.size]]),
            np.concatenate([indices, nz]),
            np.concatenate([data, mean[nz]]),
        )

    def _append(self, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, weights: np.ndarray) -> None:
        """Append CSR rows to the buffers (amortised: each buffer doubles when full, and sheds its dropped
        rows first when they are at least half of it)."""
        rows, nnz = indptr.size - 1, int(indptr[-1])
        if self._first and 2 * self._first >= self._n_stored:  # compact: the dropped rows go for good
            cut, lo = self._first, int(self._indptr[self._first])
            end, top = self._n_stored, int(self._indptr[self._n_stored])
            self._indices[: top - lo] = self._indices[lo:top]
            self._data[: top - lo] = self._data[lo:top]
            self._indptr[: end - cut + 1] = self._indptr[cut : end + 1] - lo
            self._weights[: end - cut] = self._weights[cut:end]
            self._n_stored, self._first = end - cut, 0
        top = int(self._indptr[self._n_stored])
        if top + nnz > self._indices.size:
            size = max(2 * self._indices.size, top + nnz)
            self._indices = np.resize(self._indices, size)
            self._data = np.resize(self._data, size)
        if self._n_stored + rows >= self._weights.size:
            size = max(2 * self._weights.size, self._n_stored + rows + 1)
            self._weights = np.resize(self._weights, size)
            self._indptr = np.resize(self._indptr, size + 1)
        self._indices[top : top + nnz] = indices
        self._data[top : top + nnz] = data
        self._indptr[self._n_stored + 1 : self._n_stored + rows + 1] = indptr[1:] + top
        self._weights[self._n_stored : self._n_stored + rows] = weights
        self._n_stored += rows

    def add_batch(self, levels: np.ndarray, values: np.ndarray, weight: float = 1.0) -> None:
        """Tell the values of one batch (candidates evaluated on the same data sample).

        Non-finite values (failed evaluations) are left out. A batch with fewer than two
        finite values carries no information once its offset is removed and is ignored.
        """
        vals = np.asarray(values, dtype=float)
        ok = np.isfinite(vals)
        if ok.sum() < 2:
            return
        lv = np.asarray(levels, dtype=np.int64)[ok]
        y = vals[ok]
        m = lv.shape[0]
        indptr, indices, data = self._centred_rows(lv)
        # centring: X_c = D - 1 d̄ᵀ, so X_cᵀX_c = DᵀD - m d̄ d̄ᵀ and X_cᵀy_c = Dᵀ(y - ȳ)
        w = float(weight) / self._scale
        weights = np.concatenate([np.full(m, w), [-m * w]])
        self._append(indptr, indices, data, weights)
        self._batch_weight.append(w)
        self._batch_rows.append(m + 1)
        row_of = np.repeat(np.arange(m + 1), np.diff(indptr))
        self._batch_diag.append(float(np.dot(data**2, weights[row_of])))
        yc = y - y.mean()
        n_d = int(indptr[m])
        self._b += w * np.bincount(indices[:n_d], weights=data[:n_d] * yc[row_of[:n_d]], minlength=self._size)
        self.n_rows += m - 1
        self._dirty = True

    def age(self) -> None:
        """One generation passed: past batches weigh ``decay`` times less."""
        if self.decay < 1.0:
            self._scale *= self.decay
            if self._scale < 1e-150:  # keep the stored weights in range
                self._weights[: self._n_stored] *= self._scale
                self._batch_weight = [w * self._scale for w in self._batch_weight]
                self._batch_diag = [d * self._scale for d in self._batch_diag]
                self._b *= self._scale
                self._scale = 1.0

    def _rows(self) -> tuple[sparse.csr_matrix, np.ndarray]:
        """The live rows as one CSR matrix (views of the buffers) and their true weights. The oldest
        batches, once their weight has faded below ``_FADED`` of the newest, are dropped for good."""
        newest = self._batch_weight[-1]
        faded = 0
        while faded < len(self._batch_weight) - 1 and self._batch_weight[faded] < _FADED * newest:
            faded += 1
        if faded:
            self._first += int(sum(self._batch_rows[:faded]))
            del self._batch_weight[:faded], self._batch_rows[:faded], self._batch_diag[:faded]
        lo, hi = self._first, self._n_stored
        start, stop = int(self._indptr[lo]), int(self._indptr[hi])
        indptr = self._indptr[lo : hi + 1] - start
        mat = sparse.csr_matrix(
            (self._data[start:stop], self._indices[start:stop], indptr), shape=(hi - lo, self._size), copy=False
        )
        return mat, self._weights[lo:hi] * self._scale

    # ------------------------------------------------------------------ fit
    def fit(self, exact: bool = False) -> None:
        """Refit: conjugate gradients on the ridge normal equations, warm-started, or with
        ``exact`` a direct solve (after a block of many new rows, e.g. probes)."""
        if not self._dirty:
            return
        self._dirty = False
        rows, w = self._rows()
        rows_t = rows.T  # CSC of the transpose: no copy
        b = self._b * self._scale
        diag_mean = sum(self._batch_diag) * self._scale / self._size
        lam = self.ridge * (diag_mean if diag_mean > 0 else 1.0)

        def matvec(v: np.ndarray) -> np.ndarray:
            return np.asarray(rows_t @ (w * (rows @ v)), dtype=float) + lam * v

        if exact and self._size <= _DENSE_EXACT:
            a = np.asarray((rows_t @ sparse.diags(w) @ rows).toarray())
            self._coef = np.asarray(np.linalg.solve(a + lam * np.eye(self._size), b), dtype=float)
            return
        self._coef = _conjugate_gradients(matvec, b, self._coef, _EXACT_ITERATIONS if exact else self.iterations)

    # ------------------------------------------------------------ predictions
    def predict(self, levels: np.ndarray) -> np.ndarray:
        """Predicted values up to a common constant (only differences are meaningful)."""
        lv = np.atleast_2d(np.asarray(levels, dtype=np.int64))
        # each row as the first plus its changes: offspring differ from their parent in a few units
        table = self.unit_table()
        r, u = np.nonzero(lv != lv[0][None, :])
        first = float(table[self._units, lv[0]].sum())
        change = np.bincount(r, weights=table[u, lv[r, u]] - table[u, lv[0, u]], minlength=lv.shape[0])
        return np.asarray(first + change, dtype=float)

    def unit_table(self) -> np.ndarray:
        """``(n_units, max_levels)`` predicted per-unit, per-level values (``inf`` past a unit's levels)."""
        width = int(self.space.n_levels.max())
        level = np.arange(width)[None, :]
        valid = level < self.space.n_levels[:, None]
        idx = np.where(valid, self._offset[:, None] + level, 0)
        out = np.where(valid, self._coef[idx], np.inf)
        if self.prior is not None:
            out = out + np.where(valid, self._coef[-1] * self.prior[:, :width], 0.0)
        return np.asarray(out, dtype=float)


def _rank_within(sorted_keys: np.ndarray) -> np.ndarray:
    """For a sorted key array, each entry's position among the entries with its key (0, 1, 2, ...)."""
    if sorted_keys.size == 0:
        return np.zeros(0, dtype=np.int64)
    first = np.concatenate([[True], sorted_keys[1:] != sorted_keys[:-1]])
    start = np.maximum.accumulate(np.where(first, np.arange(sorted_keys.size), 0))
    return np.arange(sorted_keys.size) - start


def _conjugate_gradients(
    matvec: Callable[[np.ndarray], np.ndarray], b: np.ndarray, x: np.ndarray, iterations: int
) -> np.ndarray:
    """``iterations`` steps of conjugate gradients on ``matvec(x) = b`` from ``x`` (stops early when solved)."""
    r = b - matvec(x)
    p = r.copy()
    rs = float(r @ r)
    tol = 1e-20 * max(1.0, float(b @ b))
    for _ in range(iterations):
        if rs <= tol:
            break
        ap = matvec(p)
        denom = float(p @ ap)
        if denom <= 0:
            break
        step = rs / denom
        x = x + step * p
        r = r - step * ap
        rs_new = float(r @ r)
        p = r + (rs_new / rs) * p
        rs = rs_new
    return x
