"""Exact streaming tensor attention on the CPU (Numba ``njit``/``prange``).

Forward and backward never materialise the n×m1×m2 logit tensor. A task owns a tile of
query rows; for each tile of K2 columns and each row j1 of K1 it recomputes the logits
``logit[i, j1, c0:c1] = (scale·Q[i] ∘ K1[j1]) · K2[c0:c1]^T`` into a small buffer,
updates an online softmax (running max, running sum, rescaled accumulator) and contracts
the probabilities with V2 and V1 on the fly (SPEC §1–§2).

Three tiers (as in STUMPY): ``_forward_kernel``/``_backward_kernel`` take only arrays and
scalars; ``forward``/``backward`` allocate, transpose and reduce; the public functions in
:mod:`tattn_numba.attention` validate.

All arithmetic is float64 (float32 inputs are widened once, O((n + m1 + m2)·(d + dv))),
so the softmax sums never lose precision; results are returned in the input dtype.

Exponentials dominate the cost and Numba's SVML path is unavailable, so
:func:`_exp_shifted` is a range-reduced, auto-vectorising exp (see its docstring).

Work partition: ``workers = numba.get_num_threads()`` iterations of a ``prange`` loop, worker
``w`` taking tasks ``w, w + workers, …``. The interleaving balances causal work (late rows
have more pairs), and each worker owns its accumulator rows for dK1, dK2, dV1, dV2, summed
afterwards, so there is no race and the result is deterministic for a given thread count.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from .. import config
from .._validation import AttentionInputs, check_memory

OPTIONS = frozenset()

_LOG2E = 1.4426950408889634
# ln 2 split so that k·_LN2_HI is exact for |k| < 2**11 (fdlibm's constants).
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
# exp(x) for x below this is replaced by exp(_EXP_FLOOR) ≈ 3.3e-308 (absolute error < 3.4e-308).
_EXP_FLOOR = -708.0
# Taylor coefficients 1/k! of exp on |r| <= ln2/2: truncation error r**13/13! < 1.7e-16.
_C0, _C1, _C2, _C3, _C4, _C5, _C6 = 1.0, 1.0, 1 / 2, 1 / 6, 1 / 24, 1 / 120, 1 / 720
_C7, _C8, _C9, _C10 = 1 / 5040, 1 / 40320, 1 / 362880, 1 / 3628800
_C11, _C12 = 1 / 39916800, 1 / 479001600

# The exp must not be compiled with ``reassoc``: LLVM would merge the two-constant range
# reduction (x − k·ln2_hi) − k·ln2_lo into x − k·ln2 and lose ~1e-13 of relative accuracy.
_EXP_FASTMATH = config.FASTMATH - {"reassoc"}


@numba.njit(fastmath=_EXP_FASTMATH, cache=config.CACHE)
def _exp_shifted(buf, count, shift):
    """In place ``buf[:count] = exp(buf[:count] − shift)``; return the sum of the results.

    Range reduction x = k·ln2 + r with |r| <= ln2/2, a degree-12 Taylor polynomial for
    e^r, and the scaling by 2^k done by adding k to the exponent bits through an int64
    view (``2.0**k`` would not vectorise). Arguments are clamped at ``_EXP_FLOOR`` so the
    exponent never underflows. Maximum relative error 2.3e-16 against libm on
    [−708, 0] (tested); for x < −708 the result is ≤ 3.4e-308 instead of e^x.
    Runs at about 0.75 ns per element on one core here, against 5.7 ns for ``math.exp``.

    Parameters
    ----------
    buf : ndarray of float64, shape (>= count,)
    count : int
    shift : float
        Subtracted first; callers pass the running row maximum so arguments are <= 0.
    """
    bits = buf.view(np.int64)
    for j in range(count):
        x = max(buf[j] - shift, _EXP_FLOOR)
        k = np.floor(x * _LOG2E + 0.5)
        r = (x - k * _LN2_HI) - k * _LN2_LO
        p = _C12
        p = p * r + _C11
        p = p * r + _C10
        p = p * r + _C9
        p = p * r + _C8
        p = p * r + _C7
        p = p * r + _C6
        p = p * r + _C5
        p = p * r + _C4
        p = p * r + _C3
        p = p * r + _C2
        p = p * r + _C1
        p = p * r + _C0
        buf[j] = p
        bits[j] += np.int64(k) << 52
    total = 0.0
    for j in range(count):
        total += buf[j]
    return total


@numba.njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _row_logits(a, K2T, c0, count, out):
    """``out[:count] = a · K2T[:, c0:c0+count]`` (one row of logits), l unrolled by 4."""
    d = a.shape[0]
    for jj in range(count):
        out[jj] = 0.0
    l = 0
    while l + 4 <= d:
        a0, a1, a2, a3 = a[l], a[l + 1], a[l + 2], a[l + 3]
        k0, k1, k2, k3 = K2T[l], K2T[l + 1], K2T[l + 2], K2T[l + 3]
        for jj in range(count):
            j = c0 + jj
            out[jj] += a0 * k0[j] + a1 * k1[j] + a2 * k2[j] + a3 * k3[j]
        l += 4
    while l < d:
        al = a[l]
        kl = K2T[l]
        for jj in range(count):
            out[jj] += al * kl[c0 + jj]
        l += 1


@numba.njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _row_contract(p, VT, c0, count, out):
    """``out[m] = Σ_jj p[jj] · VT[m, c0 + jj]`` for every m (a short matrix–vector product)."""
    for m in range(VT.shape[0]):
        v = VT[m]
        total = 0.0
        for jj in range(count):
            total += p[jj] * v[c0 + jj]
        out[m] = total


@numba.njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _rank1_update(acc, x, p, c0, count):
    """``acc[m, c0 + jj] += x[m] · p[jj]`` (accumulate an outer product into a transposed tile)."""
    for m in range(acc.shape[0]):
        xm = x[m]
        row = acc[m]
        for jj in range(count):
            row[c0 + jj] += xm * p[jj]


@numba.njit(parallel=True, fastmath=config.FASTMATH, cache=config.CACHE)
def _forward_kernel(Q, K1, K2T, V1, V2T, scale, causal, tile_rows, tile_cols, workers, O, lse):
    """Streaming forward. Shapes: Q (B,n,d), K1 (B,m1,d), K2T (B,d,m2), V1 (B,m1,dv),
    V2T (B,dv,m2); writes O (B,n,dv) and lse (B,n), all float64."""
    B, n, d = Q.shape
    m1 = K1.shape[1]
    m2 = K2T.shape[2]
    dv = V1.shape[2]
    ntiles = (n + tile_rows - 1) // tile_rows
    ntasks = B * ntiles
    for w in numba.prange(workers):
        a = np.empty(d)
        s = np.empty(tile_cols)
        t = np.empty(dv)
        acc = np.empty((tile_rows, dv))
        rmax = np.empty(tile_rows)
        rsum = np.empty(tile_rows)
        for task in range(w, ntasks, workers):
            b = task // ntiles
            i0 = (task - b * ntiles) * tile_rows
            i1 = min(i0 + tile_rows, n)
            acc[:] = 0.0
            rmax[:] = -np.inf
            rsum[:] = 0.0
            j1_end = i1 if causal else m1
            j2_end = i1 if causal else m2
            for c0 in range(0, j2_end, tile_cols):
                c1 = min(c0 + tile_cols, j2_end)
                for j1 in range(j1_end):
                    v1 = V1[b, j1]
                    for r in range(i1 - i0):
                        i = i0 + r
                        count = c1 - c0
                        if causal:
                            if j1 > i:
                                continue
                            count = min(c1, i + 1) - c0
                            if count <= 0:
                                continue
                        for l in range(d):
                            a[l] = scale * Q[b, i, l] * K1[b, j1, l]
                        _row_logits(a, K2T[b], c0, count, s)
                        cmax = s[0]
                        for jj in range(1, count):
                            cmax = max(cmax, s[jj])
                        if cmax > rmax[r]:
                            corr = math.exp(rmax[r] - cmax)
                            rsum[r] *= corr
                            for m in range(dv):
                                acc[r, m] *= corr
                            rmax[r] = cmax
                        rsum[r] += _exp_shifted(s, count, rmax[r])
                        _row_contract(s, V2T[b], c0, count, t)
                        for m in range(dv):
                            acc[r, m] += v1[m] * t[m]
            for r in range(i1 - i0):
                inv = 1.0 / rsum[r]
                for m in range(dv):
                    O[b, i0 + r, m] = acc[r, m] * inv
                lse[b, i0 + r] = rmax[r] + math.log(rsum[r])


@numba.njit(parallel=True, fastmath=config.FASTMATH, cache=config.CACHE)
def _backward_kernel(Q, K1, K2T, V1, V2T, dO, lse, delta, scale, causal, tile_rows, tile_cols, workers,
                     dQ, dK1, dK2T, dV1, dV2T):
    """Streaming backward (SPEC §2) with the forward's ``lse``; ``delta = rowsum(dO ∘ O)``.

    Writes dQ (B,n,d) directly (rows are owned by one task) and adds into the per-worker
    accumulators dK1 (W,B,m1,d), dK2T (W,B,d,m2), dV1 (W,B,m1,dv), dV2T (W,B,dv,m2).
    """
    B, n, d = Q.shape
    m1 = K1.shape[1]
    m2 = K2T.shape[2]
    dv = V1.shape[2]
    ntiles = (n + tile_rows - 1) // tile_rows
    ntasks = B * ntiles
    for w in numba.prange(workers):
        a = np.empty(d)
        g = np.empty(dv)
        p = np.empty(tile_cols)
        dz = np.empty(tile_cols)
        u = np.empty(d)
        pv = np.empty(dv)
        for task in range(w, ntasks, workers):
            b = task // ntiles
            i0 = (task - b * ntiles) * tile_rows
            i1 = min(i0 + tile_rows, n)
            j1_end = i1 if causal else m1
            j2_end = i1 if causal else m2
            for c0 in range(0, j2_end, tile_cols):
                c1 = min(c0 + tile_cols, j2_end)
                for j1 in range(j1_end):
                    for r in range(i1 - i0):
                        i = i0 + r
                        count = c1 - c0
                        if causal:
                            if j1 > i:
                                continue
                            count = min(c1, i + 1) - c0
                            if count <= 0:
                                continue
                        for l in range(d):
                            a[l] = scale * Q[b, i, l] * K1[b, j1, l]
                        for m in range(dv):
                            g[m] = dO[b, i, m] * V1[b, j1, m]
                        _row_logits(a, K2T[b], c0, count, p)
                        _exp_shifted(p, count, lse[b, i])
                        _row_logits(g, V2T[b], c0, count, dz)
                        di = delta[b, i]
                        for jj in range(count):
                            dz[jj] = p[jj] * (dz[jj] - di)
                        _row_contract(dz, K2T[b], c0, count, u)
                        for l in range(d):
                            dQ[b, i, l] += scale * K1[b, j1, l] * u[l]
                            dK1[w, b, j1, l] += scale * Q[b, i, l] * u[l]
                        _row_contract(p, V2T[b], c0, count, pv)
                        for m in range(dv):
                            dV1[w, b, j1, m] += dO[b, i, m] * pv[m]
                        _rank1_update(dK2T[w, b], a, dz, c0, count)
                        _rank1_update(dV2T[w, b], g, p, c0, count)


def _workspace(inputs: AttentionInputs) -> tuple[np.ndarray, ...]:
    """float64, C-contiguous operands with K2 and V2 transposed (B, features, m2)."""
    Q, K1, K2, V1, V2 = (np.ascontiguousarray(x, dtype=np.float64) for x in inputs[:5])
    return Q, K1, np.ascontiguousarray(K2.transpose(0, 2, 1)), V1, np.ascontiguousarray(V2.transpose(0, 2, 1))


def _tiles(n: int) -> tuple[int, int]:
    return max(1, min(config.QUERY_TILE, n)), config.KEY_TILE


def forward(inputs: AttentionInputs) -> tuple[np.ndarray, np.ndarray]:
    """Exact forward. Returns O (B, n, dv) in the input dtype and lse (B, n) float64.

    Time Θ(B·n·m1·m2·(d + dv)); extra memory O(B·(n + m1 + m2)·(d + dv)) for the float64
    working copies plus O(tile_cols + d + dv) per thread.
    """
    Q, K1, K2T, V1, V2T = _workspace(inputs)
    B, n, _ = Q.shape
    O = np.empty((B, n, V1.shape[2]))
    lse = np.empty((B, n))
    tile_rows, tile_cols = _tiles(n)
    _forward_kernel(Q, K1, K2T, V1, V2T, inputs.scale, inputs.causal, tile_rows, tile_cols,
                    numba.get_num_threads(), O, lse)
    return O.astype(inputs.dtype, copy=False), lse


def backward(inputs: AttentionInputs, O: np.ndarray, lse: np.ndarray, dO: np.ndarray) -> tuple[np.ndarray, ...]:
    """Exact backward from the forward's ``O`` and ``lse``. Returns (dQ, dK1, dK2, dV1, dV2).

    Time Θ(B·n·m1·m2·(d + dv)) (about three times the forward's contractions); extra
    memory O(workers·B·(m1 + m2)·(d + dv)) float64 for the race-free accumulators.
    """
    Q, K1, K2T, V1, V2T = _workspace(inputs)
    dO64 = np.ascontiguousarray(dO, dtype=np.float64)
    delta = np.einsum("bnm,bnm->bn", dO64, O.astype(np.float64, copy=False))
    B, n, d = Q.shape
    m1, m2, dv = K1.shape[1], K2T.shape[2], V1.shape[2]
    workers = numba.get_num_threads()
    check_memory(8 * workers * B * (m1 + m2) * (d + dv), "the exact backward's per-thread accumulators",
                 config.MEMORY_BUDGET_BYTES)
    dQ = np.zeros((B, n, d))
    dK1 = np.zeros((workers, B, m1, d))
    dK2T = np.zeros((workers, B, d, m2))
    dV1 = np.zeros((workers, B, m1, dv))
    dV2T = np.zeros((workers, B, dv, m2))
    tile_rows, tile_cols = _tiles(n)
    _backward_kernel(Q, K1, K2T, V1, V2T, dO64, np.ascontiguousarray(lse, dtype=np.float64), delta,
                     inputs.scale, inputs.causal, tile_rows, tile_cols, workers, dQ, dK1, dK2T, dV1, dV2T)
    dtype = inputs.dtype
    return (
        dQ.astype(dtype, copy=False),
        dK1.sum(axis=0).astype(dtype, copy=False),
        np.ascontiguousarray(dK2T.sum(axis=0).transpose(0, 2, 1), dtype=dtype),
        dV1.sum(axis=0).astype(dtype, copy=False),
        np.ascontiguousarray(dV2T.sum(axis=0).transpose(0, 2, 1), dtype=dtype),
    )
