"""Row chunks and the right-hand-side columns of the surrogate's summaries (shared by the
non-causal and causal drivers)."""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np

from .. import config

__all__ = ["chunks", "fill_columns", "scale_rows_and_columns", "SummaryLayout"]


class SummaryLayout(NamedTuple):
    """The columns of a summary U^T·[c | X | c·Y | X⊙Y] (see :func:`fill_columns`) for values of
    width ``dv`` and keys (or queries) of width ``d``: keys use c = 1, X = V, Y = K, so the
    blocks are [1 | V | K | V⊙K]; the forward needs only the ``narrow`` part [1 | V]."""

    d: int
    dv: int

    @property
    def narrow(self) -> int:
        """1 + dv: the forward's columns [1 | V]."""
        return 1 + self.dv

    @property
    def wide(self) -> int:
        """1 + dv + d + dv·d: the backward's columns [1 | V | K | V⊙K]."""
        return 1 + self.dv + self.d + self.dv * self.d

    @property
    def values(self) -> slice:
        return slice(1, 1 + self.dv)

    @property
    def keys(self) -> slice:
        return slice(1 + self.dv, 1 + self.dv + self.d)

    @property
    def products(self) -> slice:
        """The dv·d columns X⊙Y, value index major: column 1 + dv + d + m·d + l."""
        return slice(1 + self.dv + self.d, self.wide)

    def split(self, summary):
        """(ones column, values, keys, products) of a wide summary (rows, wide)."""
        return summary[:, 0], summary[:, self.values], summary[:, self.keys], summary[:, self.products]

    def indices(self) -> tuple[list[int], list[int], list[int]]:
        """Column indices of the values, keys and products blocks."""
        return tuple(list(range(block.start, block.stop)) for block in (self.values, self.keys, self.products))


def chunks(rows: int, size: int):
    for start in range(0, rows, size):
        yield slice(start, min(start + size, rows))


@numba.njit(parallel=True, fastmath=config.FASTMATH, cache=config.CACHE)
def fill_columns(c, X, Y, outT):
    """Column j of ``outT`` = [c_j | X_j | c_j·Y_j | X_j ⊙ Y_j] (1, a, b and a·b entries; the
    last two blocks only when ``outT`` has that many rows). These are the right-hand sides of
    the summaries: keys use c = 1, X = V, Y = K; queries c = δ, X = dO, Y = Q. The output is
    transposed (columns × rows): OpenBLAS runs the summary product faster that way round."""
    a = X.shape[1]
    b = Y.shape[1]
    rows = X.shape[0]
    for k in numba.prange(outT.shape[0]):
        dst = outT[k]
        if k == 0:
            for j in range(rows):
                dst[j] = c[j]
        elif k <= a:
            for j in range(rows):
                dst[j] = X[j, k - 1]
        elif k <= a + b:
            for j in range(rows):
                dst[j] = c[j] * Y[j, k - 1 - a]
        else:
            m = (k - 1 - a - b) // b
            l = k - 1 - a - b - m * b
            for j in range(rows):
                dst[j] = X[j, m] * Y[j, l]


@numba.njit(parallel=True, fastmath=config.FASTMATH, cache=config.CACHE)
def scale_rows_and_columns(X, row_factor, column_factor):
    """``X[i, l]·row_factor[i]·column_factor[l]`` (NumPy's broadcast over a short last axis is
    slow: 0.18 s for 10^6 × 8)."""
    out = np.empty_like(X)
    for i in numba.prange(X.shape[0]):
        for l in range(X.shape[1]):
            out[i, l] = X[i, l] * row_factor[i] * column_factor[l]
    return out
