"""Causal polynomial surrogate: prefix and suffix scans over rows (SPEC §5, last paragraph).

With the causal mask (pairs j1 <= i and j2 <= i) the key summaries of the non-causal algebra
become prefix sums over rows, P2_i = Σ_{j<=i} U2_j ⊗ c2_j and P3_i likewise, and

    [w_i | w_i·Õ_i] = Σ_α U1[i, α] · P2_i[α, :] ∘ P3_i[α, :]          (c2 = [1 | V1], c3 = [1 | V2]).

The backward needs the prefix sums with the wide columns [1 | V | K | V⊙K] at every query row
and, for each key row j, suffix sums over the query rows i >= j of products that involve
those prefixes (SPEC §2 with P̃; derivation in docs/surrogate.md). Both are done in one
reverse scan: a forward pass stores the prefix state at every chunk boundary, and the reverse
pass starts each chunk from the exact state at its end and *downdates* row by row
(state −= row term), so rounding never accumulates across more than one chunk.

Cost O(n·r·(1 + dv)) forward and O(n·r·d·dv) backward, like the non-causal surrogate, but as
vectorised per-row loops over the r features rather than BLAS products (a row's prefix state
differs from the next row's), so the constant is larger. Memory: O(r·d·dv) state plus two
r×(1 + dv + d + dv·d) checkpoints (P2 and P3) per chunk of rows, counted with everything else
by :func:`tattn_numba.poly.plan.memory_estimate`.

State arrays are stored transposed, column-of-summary × feature, so that every inner loop runs
over the r features of one contiguous row.
"""

from __future__ import annotations

import numba
import numpy as np

from .. import config
from ._blocks import SummaryLayout, chunks, fill_columns
from .features import key_features, query_features


@numba.njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _accumulate(state, columns, features, sign):
    """``state[k, :] += sign · columns[k] · features`` for every summary column k."""
    r = features.shape[0]
    for k in range(columns.shape[0]):
        row = state[k]
        factor = sign * columns[k]
        for a in range(r):
            row[a] += factor * features[a]


@numba.njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _triple(x, y, z):
    """Σ_a x[a]·y[a]·z[a]."""
    total = 0.0
    for a in range(x.shape[0]):
        total += x[a] * y[a] * z[a]
    return total


@numba.njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _dot(x, y):
    total = 0.0
    for a in range(x.shape[0]):
        total += x[a] * y[a]
    return total


@numba.njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _forward_scan(U1, U2, c2, U3, c3, P2, P3, out):
    """Rows in order: add row i to the prefix states P2, P3 (k × r), then
    ``out[i, k] = Σ_α U1[i, α]·P2[k, α]·P3[k, α]``. ``U1`` may have no rows (prefix only)."""
    with_output = U1.shape[0] > 0
    for i in range(U2.shape[0]):
        _accumulate(P2, c2[i], U2[i], 1.0)
        _accumulate(P3, c3[i], U3[i], 1.0)
        if with_output:
            for k in range(out.shape[1]):
                out[i, k] = _triple(U1[i], P2[k], P3[k])


@numba.njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _backward_scan(U1, U2, c2, U3, c3, Q, dO, delta, V1, V2, scale, P2, P3,
                   GS2, GS3, Y1, Y2, Z1, Z2, un, dQ, dK1, dK2, dV1, dV2):
    """Rows of one chunk in reverse order; see the module docstring.

    ``P2``/``P3`` (k × r, k = 1 + dv + d + dv·d, layout [1 | V | K | V⊙K]) hold the prefix
    through the chunk's last row on entry. The suffix accumulators GS2, GS3 (dv × r),
    Y1, Y2 (dv·d × r), Z1, Z2 (d × r) carry the rows after the chunk on entry and are updated
    in place. Writes the chunk's rows of dQ, dK1, dK2, dV1, dV2.
    """
    dv = dO.shape[1]
    d = Q.shape[1]
    S = 1
    K = 1 + dv
    A = 1 + dv + d
    r = un.shape[0]
    for i in range(U2.shape[0] - 1, -1, -1):
        u1 = U1[i]
        w = _triple(u1, P2[0], P3[0])
        for a in range(r):
            un[a] = u1[a] / w
        # query row i: dQ = s·(Σ_m dO_m·Σ_α un·A2·A3 − δ·Σ_α un·B2·B3)
        for l in range(d):
            total = 0.0
            for m in range(dv):
                total += dO[i, m] * _triple(un, P2[A + m * d + l], P3[A + m * d + l])
            dQ[i, l] = scale * (total - delta[i] * _triple(un, P2[K + l], P3[K + l]))
        # suffix sums over query rows >= the current key row
        for m in range(dv):
            g = dO[i, m]
            gs2, gs3, p2, p3 = GS2[m], GS3[m], P2[S + m], P3[S + m]
            for a in range(r):
                gs2[a] += g * un[a] * p2[a]
                gs3[a] += g * un[a] * p3[a]
            for l in range(d):
                gq = g * Q[i, l]
                y1, y2, pa2, pa3 = Y1[m * d + l], Y2[m * d + l], P2[A + m * d + l], P3[A + m * d + l]
                for a in range(r):
                    y1[a] += gq * un[a] * pa3[a]
                    y2[a] += gq * un[a] * pa2[a]
        for l in range(d):
            dq = delta[i] * Q[i, l]
            z1, z2, pb2, pb3 = Z1[l], Z2[l], P2[K + l], P3[K + l]
            for a in range(r):
                z1[a] += dq * un[a] * pb3[a]
                z2[a] += dq * un[a] * pb2[a]
        # key row i: its gradients from the suffix sums (which now include query row i)
        u2, u3 = U2[i], U3[i]
        for m in range(dv):
            dV1[i, m] = _dot(u2, GS3[m])
            dV2[i, m] = _dot(u3, GS2[m])
        for l in range(d):
            total1 = 0.0
            total2 = 0.0
            for m in range(dv):
                total1 += V1[i, m] * _dot(u2, Y1[m * d + l])
                total2 += V2[i, m] * _dot(u3, Y2[m * d + l])
            dK1[i, l] = scale * (total1 - _dot(u2, Z1[l]))
            dK2[i, l] = scale * (total2 - _dot(u3, Z2[l]))
        # the prefix of the previous row
        _accumulate(P2, c2[i], u2, -1.0)
        _accumulate(P3, c3[i], u3, -1.0)


def _row_major(featuresT: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(featuresT.T)


def _columns(c, X, Y, width):
    """Row-major [c | X | c·Y | X⊙Y] (first ``width`` columns) for a chunk of rows."""
    outT = np.empty((width, X.shape[0]))
    fill_columns(c, X, Y, outT)
    return np.ascontiguousarray(outT.T)


def forward(v, chunk: int) -> np.ndarray:
    """Causal surrogate forward for one batch entry: returns (n, 1 + dv) = [w | w·Õ]."""
    n, d = v.Q.shape
    width = SummaryLayout(d, v.V1.shape[1]).narrow
    r = v.table.parent.shape[0]
    P2, P3 = np.zeros((width, r)), np.zeros((width, r))
    out = np.empty((n, width))
    ones = np.ones(n)
    for rows in chunks(n, chunk):
        _forward_scan(
            _row_major(query_features(v.Qt[rows], v.coefficients[rows], v.table)),
            _row_major(key_features(v.K1t[rows], v.table)), _columns(ones[rows], v.V1[rows], v.K1[rows], width),
            _row_major(key_features(v.K2t[rows], v.table)), _columns(ones[rows], v.V2[rows], v.K2[rows], width),
            P2, P3, out[rows],
        )
    return out


def backward(v, Ohat, dO, scale: float, chunk: int) -> tuple:
    """Causal surrogate gradient for one batch entry: (dQ, dK1, dK2, dV1, dV2), float64."""
    n, d = v.Q.shape
    dv = v.V1.shape[1]
    r = v.table.parent.shape[0]
    width = SummaryLayout(d, dv).wide
    ones = np.ones(n)
    delta = np.einsum("nm,nm->n", dO, Ohat)
    pieces = list(chunks(n, chunk))

    def key_rows(rows):
        return (
            _row_major(key_features(v.K1t[rows], v.table)), _columns(ones[rows], v.V1[rows], v.K1[rows], width),
            _row_major(key_features(v.K2t[rows], v.table)), _columns(ones[rows], v.V2[rows], v.K2[rows], width),
        )

    # Memory (counted by plan.memory_estimate): the stored prefix states, one (P2, P3) pair per
    # chunk, in two arrays allocated once (a list of small copies would live on the heap, which
    # keeps their pages after they are freed); chunk arrays live only for the call that reads them.
    P2, P3 = np.zeros((width, r)), np.zeros((width, r))
    stored2, stored3 = np.empty((len(pieces), width, r)), np.empty((len(pieces), width, r))
    for index, rows in enumerate(pieces):
        _forward_scan(np.empty((0, r)), *key_rows(rows), P2, P3, np.empty((0, width)))
        stored2[index] = P2
        stored3[index] = P3
    GS2, GS3 = np.zeros((dv, r)), np.zeros((dv, r))
    Y1, Y2 = np.zeros((dv * d, r)), np.zeros((dv * d, r))
    Z1, Z2 = np.zeros((d, r)), np.zeros((d, r))
    grads = [np.empty((n, x.shape[1])) for x in (v.Q, v.K1, v.K2, v.V1, v.V2)]
    un = np.empty(r)
    for index in range(len(pieces) - 1, -1, -1):
        rows = pieces[index]
        # the scan downdates the stored state of the chunk's end in place (it is not read again)
        _backward_scan(_row_major(query_features(v.Qt[rows], v.coefficients[rows], v.table)), *key_rows(rows),
                       v.Q[rows], dO[rows], delta[rows], v.V1[rows], v.V2[rows], scale,
                       stored2[index], stored3[index], GS2, GS3, Y1, Y2, Z1, Z2, un, *(g[rows] for g in grads))
    return tuple(grads)
