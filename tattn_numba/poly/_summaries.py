"""The surrogate's streamed summaries, shared by the t = 2 drivers (:mod:`.cpu`, :mod:`.causal`)
and the n-way driver (:mod:`.nway`): Σ over rows of U^T·[c | X | c·Y | X⊙Y], the same columns
row-major for the prefix scans, and the query pass of the gradient."""

from __future__ import annotations

import numpy as np

from ._blocks import SummaryLayout, chunks, fill_columns
from .features import query_features
from .plan import PolyPlan, check_normaliser

__all__ = ["query_pass", "row_major_columns", "summary"]


def summary(features, c, X, Y, width, table, chunk):
    """Σ over rows of U^T·[c | X | c·Y | X⊙Y] (first ``width`` columns), streamed: (r, width).

    ``features(rows)`` returns U^T (r, len(rows)) for a chunk of rows.
    """
    totalT = np.zeros((width, table.parent.shape[0]))
    for rows in chunks(X.shape[0], chunk):
        blockT = np.empty((width, rows.stop - rows.start))
        fill_columns(c[rows], X[rows], Y[rows], blockT)
        totalT += blockT @ features(rows).T
    return totalT.T


def row_major_columns(c, X, Y, width):
    """Row-major [c | X | c·Y | X⊙Y] (first ``width`` columns) for a chunk of rows."""
    outT = np.empty((width, X.shape[0]))
    fill_columns(c, X, Y, outT)
    return np.ascontiguousarray(outT.T)


def query_pass(v, b: int, plan: PolyPlan, normaliser, query_side, O, dO, s: float, dQ,
               layout: SummaryLayout) -> np.ndarray:
    """One batch entry's query side of the gradient: writes dQ[b] and returns its query summary
    Un^T [dO | dO⊙Q | δ·Q] (r, wide).

    ``v`` is a driver's view of the entry (``Q``, the scaled query rows ``Qt``, the per-row
    polynomial ``coefficients`` and the feature ``table``); ``query_side`` holds the key side's
    wide summary products (r, wide) and ``normaliser`` the summary's ones column (r,)."""
    d, dv = layout.d, layout.dv
    delta = np.einsum("nm,nm->n", dO, O)

    def normalised_query_features(rows):
        """Un^T for a chunk (U1^T divided by the normaliser), and dQ for those rows."""
        U1T = query_features(v.Qt[rows], v.coefficients[rows], v.table)
        w = normaliser @ U1T
        check_normaliser(w, plan)
        U1T /= w[None, :]
        T = (query_side.T @ U1T).T
        terms = T[:, :dv * d].reshape(-1, dv, d)
        dQ[b, rows] = s * (np.einsum("cm,cml->cl", dO[rows], terms) - delta[rows, None] * T[:, dv * d:])
        return U1T

    return summary(normalised_query_features, delta, dO, v.Q, layout.wide, v.table, plan.chunk_rows)
