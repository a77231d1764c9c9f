"""Prefix scans of the causal n-way surrogate (SPEC §9 with the causal mask of §5).

With the causal mask, query i sees the tuples whose every key index is <= i: a product of t
prefixes, so every sum over the allowed tuples is a product of t prefix sums. For key set a the
prefix state at row i is P_a,i = Σ_{j<=i} c_a[j] ⊗ U_a[j] (columns c_a = [1 | V_a] in the
forward, [1 | V_a | K_a | V_a⊙K_a] in the backward, see :class:`._blocks.SummaryLayout`), and

    [w_i | w_i·Õ_i] = Σ_α U1[i, α] · Π_a P_a,i[:, α].

The backward is the reverse scan of :mod:`.causal` generalised to t key sets: the query row i
writes dQ[i] from Π_a P_a,i, then adds its terms, weighted by the product of the *other* t − 1
prefixes Π_{b≠a} P_b,i (prefix and suffix products over b: O(t) work, not t²), to the suffix
accumulator of each key set a; key row i then reads its gradients off those accumulators and
every prefix is downdated by row i. The caller restarts each chunk from a stored prefix state,
so rounding never accumulates across more than one chunk.

State arrays are (t, columns, r): every inner loop runs over the r features of one row.
"""

from __future__ import annotations

import numba
import numpy as np

from .. import config


@numba.njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _accumulate(state, columns, features, sign):
    """``state[k, :] += sign · columns[k] · features`` for every column k (the helper of
    :mod:`.causal`, kept in this module with its kernels: a cached kernel does not notice a
    change of a jitted helper in another module)."""
    r = features.shape[0]
    for k in range(columns.shape[0]):
        row = state[k]
        factor = sign * columns[k]
        for a in range(r):
            row[a] += factor * features[a]


@numba.njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _product_sum(u, P, k):
    """Σ_α u[α]·Π_a P[a, k, α]."""
    total = 0.0
    for alpha in range(u.shape[0]):
        term = u[alpha]
        for a in range(P.shape[0]):
            term *= P[a, k, alpha]
        total += term
    return total


@numba.njit(fastmath=config.FASTMATH, cache=config.CACHE)
def forward_scan(U1, Uk, ck, P, out):
    """Rows in order: add row i of every key set to its prefix state ``P`` (t, k, r), then
    ``out[i, k] = Σ_α U1[i, α]·Π_a P[a, k, α]``. ``U1`` (rows, r) may have no rows (the prefix
    only, as the backward's first pass needs); ``Uk`` (t, rows, r) and ``ck`` (t, rows, k) are
    the key features and summary columns of the chunk."""
    t, rows, _ = Uk.shape
    with_output = U1.shape[0] > 0
    for i in range(rows):
        for a in range(t):
            _accumulate(P[a], ck[a, i], Uk[a, i], 1.0)
        if with_output:
            for k in range(out.shape[1]):
                out[i, k] = _product_sum(U1[i], P, k)


@numba.njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _others(P, others, running):
    """``others[a] = Π_{b≠a} P[b]`` (ones for t = 1) by a prefix and a suffix pass."""
    t = P.shape[0]
    running[:] = 1.0
    for a in range(t):
        others[a] = running
        running *= P[a]
    running[:] = 1.0
    for a in range(t - 1, -1, -1):
        others[a] *= running
        running *= P[a]


@numba.njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _query_row(u1, q, g, delta, cq, scale, P, others, acc, un, dq):
    """Query row with features ``u1``, query ``q``, upstream ``g`` and δ ``delta``: writes
    ``dq`` = s·(Σ_m g_m·Σ_α un·Π_a P_a[A + m·d + l] − δ·Σ_α un·Π_a P_a[K + l]) and adds
    ``cq[k]·un∘others[a, k]`` to ``acc[a, k]`` (every column but the first) for every key set a."""
    t, width, r = P.shape
    d = q.shape[0]
    dv = g.shape[0]
    K = 1 + dv
    A = 1 + dv + d
    w = 0.0
    for alpha in range(r):
        w += u1[alpha] * others[0, 0, alpha] * P[0, 0, alpha]
    for alpha in range(r):
        un[alpha] = u1[alpha] / w
    for l in range(d):
        total = 0.0
        for m in range(dv):
            column = A + m * d + l
            part = 0.0
            for alpha in range(r):
                part += un[alpha] * others[0, column, alpha] * P[0, column, alpha]
            total += g[m] * part
        normal = 0.0
        for alpha in range(r):
            normal += un[alpha] * others[0, K + l, alpha] * P[0, K + l, alpha]
        dq[l] = scale * (total - delta * normal)
    for a in range(t):
        for k in range(1, width):
            factor = cq[k]
            row, other = acc[a, k], others[a, k]
            for alpha in range(r):
                row[alpha] += factor * un[alpha] * other[alpha]


@numba.njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _key_row(u, v, acc, scale, dk, dv_out):
    """Key row with features ``u`` and values ``v`` of one key set, from its accumulator ``acc``
    (width, r): dV[m] = u·acc[S + m], dK[l] = s·(Σ_m v_m·u·acc[A + m·d + l] − u·acc[K + l])."""
    dv = v.shape[0]
    d = dk.shape[0]
    r = u.shape[0]
    K = 1 + dv
    A = 1 + dv + d
    for m in range(dv):
        total = 0.0
        for alpha in range(r):
            total += u[alpha] * acc[1 + m, alpha]
        dv_out[m] = total
    for l in range(d):
        total = 0.0
        for m in range(dv):
            part = 0.0
            for alpha in range(r):
                part += u[alpha] * acc[A + m * d + l, alpha]
            total += v[m] * part
        normal = 0.0
        for alpha in range(r):
            normal += u[alpha] * acc[K + l, alpha]
        dk[l] = scale * (total - normal)


@numba.njit(fastmath=config.FASTMATH, cache=config.CACHE)
def backward_scan(U1, Uk, ck, cq, Q, dO, delta, V, scale, P, acc, dQ, dK, dV):
    """Rows of one chunk in reverse order (see the module docstring).

    ``P`` (t, W, r) holds the prefix states through the chunk's last row on entry (W = 1 + dv +
    d + dv·d), ``acc`` (t, W, r) the suffix accumulators of the rows after the chunk; both are
    updated in place. ``U1`` (rows, r), ``Uk`` (t, rows, r), ``ck`` (t, rows, W) key columns
    [1 | V | K | V⊙K], ``cq`` (rows, W) query columns [δ | dO | δ·Q | dO⊙Q], ``Q``, ``dO``,
    ``delta``, ``V`` (t, rows, dv) the chunk's rows. Writes the chunk's rows of dQ (rows, d),
    dK (t, rows, d) and dV (t, rows, dv).
    """
    t, rows, r = Uk.shape
    others = np.empty_like(P)
    running = np.empty(P.shape[1:])
    un = np.empty(r)
    for i in range(rows - 1, -1, -1):
        _others(P, others, running)
        _query_row(U1[i], Q[i], dO[i], delta[i], cq[i], scale, P, others, acc, un, dQ[i])
        for a in range(t):
            _key_row(Uk[a, i], V[a, i], acc[a], scale, dK[a, i], dV[a, i])
            _accumulate(P[a], ck[a, i], Uk[a, i], -1.0)
