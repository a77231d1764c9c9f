r"""Exact tables for the Chebyshev interpolant of :math:`e^{Ry}` (once per degree, cached).

Column :math:`s` of the table of degree :math:`g` holds the monomial coefficients of
:math:`\mathcal I_g[y^s] = y^s \bmod \omega`, :math:`\omega = 2^{-g} T_{g+1}` the monic node
polynomial of the :math:`g+1` Chebyshev points of the first kind. Columns are computed in exact
dyadic rational arithmetic (Python integers; the recurrence
:math:`p_{s+1} = y\,p_s - \mathrm{lead}(p_s)\,\omega`), rounded once to float64, and grown on
demand; their 1-norms are rounded upwards. Used by :mod:`tattn_numba.poly.exp_approx`; the
derivation is in :doc:`/math/exp_polynomials`.

Thread-safe: one lock guards the per-degree cache and one lock per table guards its growth.
"""

from __future__ import annotations

import threading

import numpy as np

from .rounding import UNIT_ROUNDOFF


def _cheb_T_int(n: int) -> list[int]:
    """Integer monomial coefficients (ascending) of the Chebyshev polynomial T_n."""
    prev, cur = [1], [0, 1]
    if n == 0:
        return prev
    for _ in range(n - 1):
        nxt = [0] + [2 * c for c in cur]
        for i, c in enumerate(prev):
            nxt[i] -= c
        prev, cur = cur, nxt
    return cur


class _ChebTable:
    """Columns ``G[:, s]`` = monomial coefficients of I_g[y^s] (exact, then float64), grown on demand."""

    def __init__(self, degree: int):
        self.g = degree
        self.T = _cheb_T_int(degree + 1)  # T_{g+1}: leading coefficient 2^g
        self.cols: list[np.ndarray] = []
        self.norms: list[float] = []
        for s in range(degree + 1):  # identity block: I_g[y^s] = y^s
            col = np.zeros(degree + 1)
            col[s] = 1.0
            self.cols.append(col)
            self.norms.append(1.0)
        self.num = [0] * degree + [1]  # exact numerators of column g (y^g), denominator 2^exp
        self.exp = 0
        self._arr = None
        self._nrm = None
        self.lock = threading.Lock()

    def _step(self) -> None:
        g, T, num = self.g, self.T, self.num
        lead = num[g]
        # y·p - lead·T_{g+1}/2^g, over the common denominator 2^(exp+g); the y^(g+1) term cancels
        new = [((num[t - 1] if t > 0 else 0) << g) - lead * T[t] for t in range(g + 1)]
        exp = self.exp + g
        nz = [abs(v) for v in new if v]
        if nz:  # strip common powers of two to keep the integers small
            v = min((x & -x).bit_length() - 1 for x in nz)
            v = min(v, exp)
            if v:
                new = [x >> v for x in new]
                exp -= v
        else:
            exp = 0
        self.num, self.exp = new, exp
        den = 1 << exp
        # int / int true division is correctly rounded in CPython
        self.cols.append(np.array([x / den for x in new], dtype=np.float64))
        self.norms.append((sum(abs(x) for x in new) / den) * (1.0 + 2.0 * UNIT_ROUNDOFF))  # rounded upwards

    def get(self, smax: int) -> tuple[np.ndarray, np.ndarray]:
        """``(G[:, :smax + 1], ||G[:, s]||_1 for s <= smax)``, growing the table if needed."""
        with self.lock:
            if len(self.cols) <= smax:
                while len(self.cols) <= smax:
                    self._step()
                self._arr = None
            if self._arr is None or self._arr.shape[1] <= smax:
                self._arr = np.stack(self.cols, axis=1)
                self._nrm = np.array(self.norms)
            return self._arr[:, : smax + 1], self._nrm[: smax + 1]


_TABLES: dict[int, _ChebTable] = {}
_TABLES_LOCK = threading.Lock()


def _cheb_table(degree: int) -> _ChebTable:
    """The cached table of ``degree`` (created on first use)."""
    with _TABLES_LOCK:
        tab = _TABLES.get(degree)
        if tab is None:
            tab = _TABLES[degree] = _ChebTable(degree)
        return tab
