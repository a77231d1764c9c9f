"""Row chunks and the right-hand-side columns of the surrogate's summaries (shared by the
non-causal and causal drivers)."""

from __future__ import annotations

import numba

from .. import config

__all__ = ["chunks", "fill_columns"]


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
