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

Causal sliding windows (``window=(w1, w2)``) use the windowed scans at the end of this module:
running window sums with exact restarts (see the comment there).

State arrays are stored transposed, column-of-summary × feature, so that every inner loop runs
over the r features of one contiguous row.
"""

from __future__ import annotations

import numba
import numpy as np

from .. import config
from ._blocks import SummaryLayout, chunks
from ._summaries import row_major_columns
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
def _add_product(acc, factor, x, y):
    """``acc[a] += factor · x[a] · y[a]`` over the r features."""
    for a in range(acc.shape[0]):
        acc[a] += factor * x[a] * y[a]


@numba.njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _query_row(u1, i, P2, P3, Q, dO, delta, scale, sign, do1, do2, write_dQ, dQ,
               GS2, GS3, Y1, Y2, Z1, Z2, un):
    """Query row ``i`` with its key states P2, P3 (prefix or window): writes dQ[i] (``write_dQ``) and adds
    ``sign`` times its terms to the accumulators of key set 1 (GS3, Y1, Z1; ``do1``) and of key
    set 2 (GS2, Y2, Z2; ``do2``)."""
    dv = dO.shape[1]
    d = Q.shape[1]
    S = 1
    K = 1 + dv
    A = 1 + dv + d
    r = un.shape[0]
    w = _triple(u1, P2[0], P3[0])
    for a in range(r):
        un[a] = u1[a] / w
    if write_dQ:
        for l in range(d):
            total = 0.0
            for m in range(dv):
                total += dO[i, m] * _triple(un, P2[A + m * d + l], P3[A + m * d + l])
            dQ[i, l] = scale * (total - delta[i] * _triple(un, P2[K + l], P3[K + l]))
    for m in range(dv):
        g = sign * dO[i, m]
        if do2:
            _add_product(GS2[m], g, un, P2[S + m])
        if do1:
            _add_product(GS3[m], g, un, P3[S + m])
        for l in range(d):
            gq = g * Q[i, l]
            if do1:
                _add_product(Y1[m * d + l], gq, un, P3[A + m * d + l])
            if do2:
                _add_product(Y2[m * d + l], gq, un, P2[A + m * d + l])
    for l in range(d):
        dq = sign * delta[i] * Q[i, l]
        if do1:
            _add_product(Z1[l], dq, un, P3[K + l])
        if do2:
            _add_product(Z2[l], dq, un, P2[K + l])


@numba.njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _key_row(u2, u3, j, V1, V2, scale, GS2, GS3, Y1, Y2, Z1, Z2, dK1, dK2, dV1, dV2):
    """Key row ``j``'s gradients dK1[j], dK2[j], dV1[j], dV2[j] from its feature rows ``u2``,
    ``u3`` and the sums over the query rows that see it (GS, Y, Z)."""
    dv = V1.shape[1]
    d = dK1.shape[1]
    for m in range(dv):
        dV1[j, m] = _dot(u2, GS3[m])
        dV2[j, m] = _dot(u3, GS2[m])
    for l in range(d):
        total1 = 0.0
        total2 = 0.0
        for m in range(dv):
            total1 += V1[j, m] * _dot(u2, Y1[m * d + l])
            total2 += V2[j, m] * _dot(u3, Y2[m * d + l])
        dK1[j, l] = scale * (total1 - _dot(u2, Z1[l]))
        dK2[j, l] = scale * (total2 - _dot(u3, Z2[l]))


@numba.njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _backward_scan(U1, U2, c2, U3, c3, Q, dO, delta, V1, V2, scale, P2, P3,
                   GS2, GS3, Y1, Y2, Z1, Z2, un, dQ, dK1, dK2, dV1, dV2):
    """Rows of one chunk in reverse order; see the module docstring.

    ``P2``/``P3`` (k × r, k = 1 + dv + d + dv·d, layout [1 | V | K | V⊙K]) hold the prefix
    through the chunk's last row on entry. The suffix accumulators GS2, GS3 (dv × r),
    Y1, Y2 (dv·d × r), Z1, Z2 (d × r) carry the rows after the chunk on entry and are updated
    in place. Writes the chunk's rows of dQ, dK1, dK2, dV1, dV2.
    """
    for i in range(U2.shape[0] - 1, -1, -1):
        # query row i: dQ[i], and its terms added to the suffix sums over query rows >= the key row
        _query_row(U1[i], i, P2, P3, Q, dO, delta, scale, 1.0, True, True, True, dQ, GS2, GS3, Y1, Y2, Z1, Z2, un)
        # key row i: its gradients from the suffix sums (which now include query row i)
        u2, u3 = U2[i], U3[i]
        _key_row(u2, u3, i, V1, V2, scale, GS2, GS3, Y1, Y2, Z1, Z2, dK1, dK2, dV1, dV2)
        # the prefix of the previous row
        _accumulate(P2, c2[i], u2, -1.0)
        _accumulate(P3, c3[i], u3, -1.0)


def _row_major(featuresT: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(featuresT.T)


def _forward_buffers(v) -> tuple:
    """(n, width, P2, P3, out, ones) of a forward scan: zero states (1 + dv, r), the output
    (n, 1 + dv) and a column of ones."""
    n, d = v.Q.shape
    width = SummaryLayout(d, v.V1.shape[1]).narrow
    r = v.table.parent.shape[0]
    return n, width, np.zeros((width, r)), np.zeros((width, r)), np.empty((n, width)), np.ones(n)


def forward(v, chunk: int) -> np.ndarray:
    """Causal surrogate forward for one batch entry: returns (n, 1 + dv) = [w | w·Õ]."""
    n, width, P2, P3, out, ones = _forward_buffers(v)
    for rows in chunks(n, chunk):
        _forward_scan(
            _row_major(query_features(v.Qt[rows], v.coefficients[rows], v.table)),
            _row_major(key_features(v.K1t[rows], v.table)),
            row_major_columns(ones[rows], v.V1[rows], v.K1[rows], width),
            _row_major(key_features(v.K2t[rows], v.table)),
            row_major_columns(ones[rows], v.V2[rows], v.K2[rows], width),
            P2, P3, out[rows],
        )
    return out


def _backward_setup(v, Ohat, dO) -> tuple:
    """(n, d, dv, r, width, ones, delta) of a backward scan: the sizes, the wide summary width
    1 + dv + d + dv·d, a column of ones and δ = rowsum(dO ∘ Õ)."""
    n, d = v.Q.shape
    dv = v.V1.shape[1]
    return (n, d, dv, v.table.parent.shape[0], SummaryLayout(d, dv).wide, np.ones(n),
            np.einsum("nm,nm->n", dO, Ohat))


def backward(v, Ohat, dO, scale: float, chunk: int) -> tuple:
    """Causal surrogate gradient for one batch entry: (dQ, dK1, dK2, dV1, dV2), float64."""
    n, d, dv, r, width, ones, delta = _backward_setup(v, Ohat, dO)
    pieces = list(chunks(n, chunk))

    def key_rows(rows):
        return (
            _row_major(key_features(v.K1t[rows], v.table)),
            row_major_columns(ones[rows], v.V1[rows], v.K1[rows], width),
            _row_major(key_features(v.K2t[rows], v.table)),
            row_major_columns(ones[rows], v.V2[rows], v.K2[rows], width),
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


# --------------------------------------------------------------------------------------------
# Causal sliding windows (w1, w2): row i sees j1 in [i + 1 − w1, i + 1), j2 in [i + 1 − w2, i + 1).
#
# The prefix states become window states S2_i = Σ_{j1 in window1(i)} U2_j1 ⊗ c2_j1 (S3 likewise),
# kept as running sums: add the entering key row, subtract the leaving one. So that rounding
# never accumulates along the sequence, the state of key set k restarts exactly from its window
# (at most w_k rows summed from zero) every w_k rows of a scan; a state therefore holds at most
# 3·w_k − 2 added or subtracted terms (rounding.forward_spans / backward_spans). A key set whose
# window covers all n rows (e.g. window (8, n)) is the plain prefix: the forward carries it.
#
# The backward needs, for key row j, sums over the query rows that see j, the interval
# [j, j + w) (Mask.query_ranges). Per chunk [c0, e] they restart from zero: a lead scan walks the
# query rows from top = min(n, e + max(w1, w2)) − 1 down to c0 adding each row's terms (set-1
# terms only for rows < e + w1, set-2 terms for rows < e + w2), and two trailing scans (one per
# key set), each with its own window states, recompute and subtract the terms of the query row
# j + w_k that leaves the interval. Work per chunk O((chunk + max w)·r·d·dv) for the lead plus
# O(chunk·r·d·dv) per trailing scan, and O(w) per state restart every w rows; memory the
# feature rows of up to chunk + 2·max(w) rows (plan.memory_estimate, ``window=``).
# Windows of at least n on both sides take the causal code above (bit-identical results).
# --------------------------------------------------------------------------------------------


@numba.njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _set_state(P, U, c, i, w, base):
    """Exact window sum of one key set for row ``i`` (absolute), from zero; ``U``, ``c`` start at
    row ``base``."""
    P[:] = 0.0
    for j in range(max(0, i + 1 - w), i + 1):
        _accumulate(P, c[j - base], U[j - base], 1.0)


@numba.njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _set_visit(P, U, c, i, w, steps, base, up):
    """One key set's state at row ``i``, ``steps`` rows after the scan's first row: every w
    steps it restarts exactly from the window (so a state never carries more than w steps of
    running updates); otherwise it moves by one row from its previous row (i − 1 when ``up``,
    i + 1 otherwise), adding the entering key row and subtracting the leaving one."""
    if steps % w == 0:
        _set_state(P, U, c, i, w, base)
    elif up:
        _accumulate(P, c[i - base], U[i - base], 1.0)
        if i - w >= 0:
            _accumulate(P, c[i - w - base], U[i - w - base], -1.0)
    else:
        _accumulate(P, c[i + 1 - base], U[i + 1 - base], -1.0)
        if i + 1 - w >= 0:
            _accumulate(P, c[i + 1 - w - base], U[i + 1 - w - base], 1.0)


@numba.njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _visit_down(P2, P3, U2, c2, U3, c3, i, origin, w1, w2, base):
    """Both window states at row ``i`` of a reverse scan that started at row ``origin`` >= i."""
    _set_visit(P2, U2, c2, i, w1, origin - i, base, False)
    _set_visit(P3, U3, c3, i, w2, origin - i, base, False)


@numba.njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _window_forward_scan(c0, w1, w2, carry1, carry2, base, U1, U2, c2, U3, c3, P2, P3, out):
    """Rows c0 .. c0 + len(U1) − 1 with running window states that restart exactly every w rows
    (from the chunk's first row); a key set whose window covers every row (``carry``) keeps its
    prefix state from the previous chunk. ``out[i − c0, k] = Σ_α U1·P2[k]·P3[k]``."""
    for t in range(U1.shape[0]):
        i = c0 + t
        _set_visit(P2, U2, c2, i, w1, t + (1 if carry1 and c0 > 0 else 0), base, True)
        _set_visit(P3, U3, c3, i, w2, t + (1 if carry2 and c0 > 0 else 0), base, True)
        for k in range(out.shape[1]):
            out[t, k] = _triple(U1[t], P2[k], P3[k])


@numba.njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _window_backward_chunk(c0, e, top, w1, w2, base, U1, U2, c2, U3, c3, Q, dO, delta, V1, V2, scale,
                           states, GS2, GS3, Y1, Y2, Z1, Z2, un, dQ, dK1, dK2, dV1, dV2):
    """Gradients of the rows c0 .. e of one chunk (see the section comment). ``U1`` holds the
    query rows c0 .. top, the key arrays the rows base .. top; Q, dO, delta, V1, V2 and the
    gradients are whole (n rows). ``states`` (6, k, r): lead P2, P3, trail-1 P2, P3, trail-2 P2, P3.
    The accumulators are zeroed here: every chunk restarts them."""
    n = Q.shape[0]
    GS2[:] = 0.0
    GS3[:] = 0.0
    Y1[:] = 0.0
    Y2[:] = 0.0
    Z1[:] = 0.0
    Z2[:] = 0.0
    L2, L3 = states[0], states[1]
    origin = np.full(2, -1)  # the first rows of the two trailing scans (-1: not started)
    for i in range(top, c0 - 1, -1):
        _visit_down(L2, L3, U2, c2, U3, c3, i, top, w1, w2, base)
        _query_row(U1[i - c0], i, L2, L3, Q, dO, delta, scale, 1.0, i <= e + w1 - 1, i <= e + w2 - 1, i <= e,
                   dQ, GS2, GS3, Y1, Y2, Z1, Z2, un)
        if i <= e:
            j = i
            for side in range(2 if j < e else 0):
                # row j + w leaves the query interval [j, j + w) of key set 1 (side 0), then of set 2
                row = j + (w1 if side == 0 else w2)
                if row <= n - 1:
                    if origin[side] < 0:
                        origin[side] = row
                    P2, P3 = states[2 + 2 * side], states[3 + 2 * side]
                    _visit_down(P2, P3, U2, c2, U3, c3, row, origin[side], w1, w2, base)
                    _query_row(U1[row - c0], row, P2, P3, Q, dO, delta, scale, -1.0, side == 0, side == 1, False,
                               dQ, GS2, GS3, Y1, Y2, Z1, Z2, un)
            _key_row(U2[j - base], U3[j - base], j, V1, V2, scale, GS2, GS3, Y1, Y2, Z1, Z2, dK1, dK2, dV1, dV2)


def window_top(e: int, n: int, widths: tuple[int, int]) -> int:
    """Highest query row the backward's lead scan visits for the chunk ending at row ``e``."""
    return min(n, e + max(widths)) - 1


def window_forward(v, chunk: int, widths: tuple[int, int]) -> np.ndarray:
    """Windowed forward for one batch entry: returns (n, 1 + dv) = [w | w·Õ]."""
    w1, w2 = widths
    n, width, P2, P3, out, ones = _forward_buffers(v)
    carry1, carry2 = w1 >= n, w2 >= n
    reach = max(w for w in widths if w < n)  # key rows before the chunk a restart reads
    for rows in chunks(n, chunk):
        c0 = rows.start
        keys = slice(max(0, c0 + 1 - reach), rows.stop)
        _window_forward_scan(
            c0, w1, w2, carry1, carry2, keys.start,
            _row_major(query_features(v.Qt[rows], v.coefficients[rows], v.table)),
            _row_major(key_features(v.K1t[keys], v.table)),
            row_major_columns(ones[keys], v.V1[keys], v.K1[keys], width),
            _row_major(key_features(v.K2t[keys], v.table)),
            row_major_columns(ones[keys], v.V2[keys], v.K2[keys], width),
            P2, P3, out[rows],
        )
    return out


def window_backward(v, Ohat, dO, scale: float, chunk: int, widths: tuple[int, int]) -> tuple:
    """Windowed surrogate gradient for one batch entry: (dQ, dK1, dK2, dV1, dV2), float64."""
    w1, w2 = widths
    n, d, dv, r, width, ones, delta = _backward_setup(v, Ohat, dO)
    states = np.zeros((6, width, r))
    GS2, GS3 = np.zeros((dv, r)), np.zeros((dv, r))
    Y1, Y2 = np.zeros((dv * d, r)), np.zeros((dv * d, r))
    Z1, Z2 = np.zeros((d, r)), np.zeros((d, r))
    grads = [np.empty((n, x.shape[1])) for x in (v.Q, v.K1, v.K2, v.V1, v.V2)]
    un = np.empty(r)
    for rows in chunks(n, chunk):
        c0, e = rows.start, rows.stop - 1
        top = window_top(e, n, widths)
        queries = slice(c0, top + 1)
        keys = slice(max(0, c0 + 1 - max(w1, w2)), top + 1)
        _window_backward_chunk(
            c0, e, top, w1, w2, keys.start,
            _row_major(query_features(v.Qt[queries], v.coefficients[queries], v.table)),
            _row_major(key_features(v.K1t[keys], v.table)),
            row_major_columns(ones[keys], v.V1[keys], v.K1[keys], width),
            _row_major(key_features(v.K2t[keys], v.table)),
            row_major_columns(ones[keys], v.V2[keys], v.K2[keys], width),
            v.Q, dO, delta, v.V1, v.V2, scale, states, GS2, GS3, Y1, Y2, Z1, Z2, un, *grads,
        )
    return tuple(grads)
