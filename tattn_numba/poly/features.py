"""Polynomial feature maps of SPEC §5: the low-rank factors U1, U2, U3.

For a polynomial P(x) = Σ_t a_t (x / R)^t and a logit x = s·Σ_l q_l k1_l k2_l, the multinomial
theorem gives one column per multi-index α ∈ N^d, |α| <= g:

    P(x) = Σ_α U1[α] · U2[α] · U3[α],
    U1[α] = a_|α| · (|α|! / α!) · Π_l q̃_l^{α_l},   q̃_l = s·q_l·κ1_l·κ2_l / R,
    U2[α] = Π_l (k1_l / κ1_l)^{α_l},                 U3[α] = Π_l (k2_l / κ2_l)^{α_l},

with κ1_l = max_j |K1[j, l]| and κ2_l = max_j |K2[j, l]| (1 where a column is zero). This is
the balancing of SPEC §5: key-side entries lie in [−1, 1], so U2 and U3 never overflow at any
degree; the query side carries a_t·(Σ_l |q̃_l|)^t, which stays moderate because
Σ_l |q̃_l·k̂1_l·k̂2_l| <= 1 whenever R bounds the row's absolute logit sum (both the ℓ∞ and the
Hölder radius do).

Columns are ordered by degree, and within a degree as non-decreasing index sequences
l_1 <= … <= l_t; every column is its parent column (drop the last index) times one variable, so
a row of features costs r multiplications (:func:`_monomials`). The maps are returned
transposed, features × rows, so that every column is one contiguous vectorised loop; the
low-rank products take the transpose for free.
"""

from __future__ import annotations

from functools import lru_cache
from math import comb
from typing import NamedTuple

import numba
import numpy as np

from .. import config

__all__ = ["MultiIndexTable", "multi_index_table", "rank", "query_features", "key_features"]


def rank(d: int, degree: int) -> int:
    """Number of multi-indices α ∈ N^d with |α| <= degree: C(d + degree, degree)."""
    return comb(d + degree, degree)


class MultiIndexTable(NamedTuple):
    """Column layout of the feature maps for (d, degree); every array has length r.

    parent : int64, column index of α − e_var (column 0, α = 0, is its own parent)
    var : int64, the variable l appended to the parent (0 for column 0)
    degree : int64, |α|
    multinomial : float64, |α|! / α!
    """

    parent: np.ndarray
    var: np.ndarray
    degree: np.ndarray
    multinomial: np.ndarray


@lru_cache(maxsize=32)
def multi_index_table(d: int, degree: int) -> MultiIndexTable:
    """The column layout for ``d`` variables up to ``degree`` (cached; O(r) time and memory)."""
    r = rank(d, degree)
    parent = np.zeros(r, dtype=np.int64)
    var = np.zeros(r, dtype=np.int64)
    deg = np.zeros(r, dtype=np.int64)
    mult = np.ones(r, dtype=np.float64)
    last = np.zeros(r, dtype=np.int64)  # largest variable index in α (0 for α = 0)
    count_last = np.zeros(r, dtype=np.int64)  # α_last
    start, stop, nxt = 0, 1, 1
    for t in range(1, degree + 1):
        for p in range(start, stop):
            first_var = last[p] if t > 1 else 0
            for l in range(first_var, d):
                parent[nxt] = p
                var[nxt] = l
                deg[nxt] = t
                count_last[nxt] = count_last[p] + 1 if (t > 1 and l == last[p]) else 1
                last[nxt] = l
                mult[nxt] = mult[p] * t / count_last[nxt]
                nxt += 1
        start, stop = stop, nxt
    assert nxt == r
    return MultiIndexTable(parent, var, deg, mult)


#: Rows per block of the feature kernels (``config.FEATURE_BLOCK_ROWS``, a compile-time constant).
BLOCK = config.FEATURE_BLOCK_ROWS


@numba.njit(parallel=True, fastmath=config.FASTMATH, cache=config.CACHE)
def _monomials(X, parent, var, degree, multinomial, coefficients, weighted, out):
    """``out[c, :] = Π_l X[:, l]^{α_l}`` for column c ↔ α: one product of two rows per column.

    ``X`` is row-major (rows, d). With ``weighted``, each column is then multiplied by
    ``multinomial[c]·coefficients[:, |α|]`` (the query side) while the block is still in cache.
    The output is transposed (features × rows) so each column is a contiguous, vectorised loop.
    Rows are processed in parallel blocks of :data:`BLOCK`, each transposing its slice of X (and
    of the coefficients) into a small local buffer first (NumPy's transpose of a skinny array
    costs ~20 ns per element); within a block the columns run in order.
    """
    rows, d = X.shape
    r = parent.shape[0]
    for blk in numba.prange((rows + BLOCK - 1) // BLOCK):
        j0 = blk * BLOCK
        count = min(BLOCK, rows - j0)
        xT = np.empty((d, count))
        for j in range(count):
            for l in range(d):
                xT[l, j] = X[j0 + j, l]
        first = out[0, j0:j0 + count]
        first[:] = 1.0
        for c in range(1, r):
            dst = out[c, j0:j0 + count]
            src = out[parent[c], j0:j0 + count]
            x = xT[var[c]]
            for j in range(count):
                dst[j] = src[j] * x[j]
        if weighted:
            cT = np.empty((coefficients.shape[1], count))
            for j in range(count):
                for t in range(coefficients.shape[1]):
                    cT[t, j] = coefficients[j0 + j, t]
            for c in range(r):
                dst = out[c, j0:j0 + count]
                coefficient = cT[degree[c]]
                weight = multinomial[c]
                for j in range(count):
                    dst[j] *= weight * coefficient[j]


def _features(X: np.ndarray, table: MultiIndexTable, coefficients: np.ndarray | None,
              out: np.ndarray | None) -> np.ndarray:
    if out is None:
        out = np.empty((table.parent.shape[0], X.shape[0]))
    weighted = coefficients is not None
    _monomials(np.ascontiguousarray(X, dtype=np.float64), table.parent, table.var, table.degree,
               table.multinomial, np.ascontiguousarray(coefficients, dtype=np.float64) if weighted else np.ones((1, 1)),
               weighted, out)
    return out


def query_features(Qt: np.ndarray, coefficients: np.ndarray, table: MultiIndexTable,
                   out: np.ndarray | None = None) -> np.ndarray:
    """U1^T for balanced query rows (features × rows).

    Parameters
    ----------
    Qt : ndarray, shape (rows, d)
        q̃ = s·Q·κ1·κ2 / R, the queries times the scale and the key column maxima, divided by
        the row radius.
    coefficients : ndarray, shape (rows, degree + 1)
        Per-row coefficients a_{i,t} of P_i in the scaled variable x / R_i.
    table : MultiIndexTable
    out : ndarray, shape (r, rows), optional

    Returns
    -------
    U1T : ndarray, shape (r, rows), float64
        ``U1T[α, i] = a_{i,|α|} · (|α|!/α!) · Π_l Qt[i, l]^{α_l}``. Time O(rows·r).
    """
    return _features(Qt, table, coefficients, out)


def key_features(Kt: np.ndarray, table: MultiIndexTable, out: np.ndarray | None = None) -> np.ndarray:
    """U2^T (or U3^T) for balanced key rows ``Kt = K / κ`` (entries in [−1, 1]); shape (r, rows)."""
    return _features(Kt, table, None, out)
