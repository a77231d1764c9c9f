"""Exact streaming attention of any order t on the CPU (Numba ``njit``/``prange``), SPEC §9.

Query i attends to t-tuples (j1, …, jt) with ``logit[i, j] = scale·Σ_l Q[i,l]·Π_a Ka[j_a,l]`` and
value ``V1[j1] ∘ … ∘ Vt[jt]``. The n×m1×…×mt tensor is never stored. Inside a task (one query
row) an odometer enumerates the tuples of the first t − 2 key sets, keeping the prefix products
``A[a] = Q_i ∘ K1[j1] ∘ … ∘ Ka[ja]`` and ``W[a] = V1[j1] ∘ … ∘ Va[ja]`` and updating them from
the outermost level that changed. The last two key sets are processed as in the t = 2 kernel
(:mod:`tattn_numba.exact.cpu`): a block of rows of K_{t−1} times the prefix gives ``a_t``, each
tile of K_t gives the logit tile ``K_t · a_t`` (:func:`~tattn_numba.exact.cpu._mm`), exponentiated
against the running maximum by :func:`~tattn_numba.exact.cpu._exp_shifted` (online softmax) and
contracted with V_t and then V_{t−1}. t = 1 is computed as t = 2 with a first key set of one row
of ones (its key and value are ones, so logits and values are unchanged).

Three tiers: ``_forward_kernel``/``_backward_kernel`` take arrays and scalars; :func:`forward` and
:func:`backward` check the memory budget, allocate and reduce; :mod:`tattn_numba.nway` validates.
Everything is computed in float64 (float32 inputs are widened). Work partition as in
:mod:`tattn_numba.exact.cpu`: worker ``w`` of ``workers`` takes the rows ``w, w + workers, …``
and owns its key/value gradient accumulators, summed afterwards (no race, deterministic for a
given thread count).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from .. import config
from .._validation import check_memory
from .cpu import (MEMORY_SLACK, MemoryEstimate, _exp_running, _exp_shifted, _mm, _running_shift, _tile_max,
                  _wide_vectors)

__all__ = ["backward", "forward", "memory_estimate"]


@numba.njit(inline="always", cache=config.CACHE)
def _odometer_step(idx, ends):
    """Advance the multi-index ``idx`` (last level fastest) below ``ends``; return the outermost
    level that changed, or −1 when the enumeration is finished."""
    a = idx.shape[0] - 1
    while a >= 0:
        idx[a] += 1
        if idx[a] < ends[a]:
            return a
        idx[a] = 0
        a -= 1
    return -1


@numba.njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _task_bounds(offsets, ma, mz, i, causal, ends):
    """Key counts query row ``i`` sees: writes the first t − 2 sets' into ``ends`` and returns
    those of sets t − 1 and t (all of each set, or its first i + 1 rows when ``causal``)."""
    for a in range(ends.shape[0]):
        ends[a] = offsets[a + 1] - offsets[a]
        if causal:
            ends[a] = min(ends[a], i + 1)
    if causal:
        return min(ma, i + 1), min(mz, i + 1)
    return ma, mz


@numba.njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _extend_prefixes(A, W, Kpre, Vpre, offsets, idx, b, lo):
    """Prefix products from level ``lo`` on for the current tuple ``idx`` of the first t − 2 sets:
    ``A[a + 1] = A[a] ∘ K_a[idx[a]]`` (from the query row in A[0]) and ``W[a + 1] = W[a] ∘ V_a[idx[a]]``."""
    for a in range(lo, idx.shape[0]):
        r = offsets[a] + idx[a]
        for l in range(A.shape[1]):
            A[a + 1, l] = A[a, l] * Kpre[b, r, l]
        for m in range(W.shape[1]):
            W[a + 1, m] = W[a, m] * Vpre[b, r, m]


@numba.njit(parallel=True, fastmath=config.FASTMATH, cache=config.CACHE)
def _forward_kernel(Q, Kpre, Vpre, offsets, KaT, VaT, Kz, VzT, key_batch, scale, causal, tile1, tile2, workers, O,
                    lse):
    """Streaming forward, float64.

    Q (B,n,d); Kpre (B,M,d) and Vpre (B,M,dv): the first L = t − 2 key and value sets stacked,
    set a at rows ``offsets[a]:offsets[a+1]``; KaT (B,d,ma), VaT (B,dv,ma): set t − 1 transposed;
    Kz (B,mz·d) and VzT (B,dv·mz): set t flattened and transposed-flattened. O (B,n,dv) and
    lse (B,n) out. ``causal`` keeps key indices ``<= i`` in every set.
    """
    B, n, d = Q.shape
    L = offsets.shape[0] - 1
    ma, dv = KaT.shape[2], VaT.shape[1]
    mz = Kz.shape[1] // d
    for w in numba.prange(workers):
        _wide_vectors()
        A = np.empty((L + 1, d))
        W = np.empty((L + 1, dv))
        idx = np.zeros(L, np.int64)
        ends = np.empty(L, np.int64)
        a_t = np.empty(d * tile1)
        t_t = np.empty(dv * tile1)
        s_t = np.empty(tile2 * tile1)
        acc = np.empty(dv)
        for task in range(w, B * n, workers):
            b = task // n
            i = task - b * n
            kb = key_batch[b]
            end_a, end_z = _task_bounds(offsets, ma, mz, i, causal, ends)
            row_max = -np.inf
            row_sum = 0.0
            acc[:] = 0.0
            A[0, :] = Q[b, i, :]
            W[0, :] = 1.0
            idx[:] = 0
            lo = 0
            while lo >= 0:
                _extend_prefixes(A, W, Kpre, Vpre, offsets, idx, kb, lo)
                for j0 in range(0, end_a, tile1):
                    c1 = min(tile1, end_a - j0)
                    for l in range(d):
                        pl = A[L, l]
                        row = KaT[kb, l, j0: j0 + c1]
                        o = a_t[l * c1: (l + 1) * c1]
                        for jj in range(c1):
                            o[jj] = pl * row[jj]
                    t_t[: dv * c1] = 0.0
                    for k0 in range(0, end_z, tile2):
                        c2 = min(tile2, end_z - k0)
                        _mm(Kz[kb, k0 * d: (k0 + c2) * d], d, a_t, c1, s_t, c1, c2, d, c1, False)
                        tile_max = _running_shift(s_t, scale * _tile_max(s_t, c2 * c1))
                        if tile_max > row_max:
                            corr = math.exp(row_max - tile_max)
                            row_sum *= corr
                            for m in range(dv):
                                acc[m] *= corr
                            for jj in range(dv * c1):
                                t_t[jj] *= corr
                            row_max = tile_max
                        row_sum += _exp_running(s_t, c2 * c1, scale, row_max)
                        _mm(VzT[kb, k0:], mz, s_t, c1, t_t, c1, dv, c2, c1, True)
                    for m in range(dv):
                        tr = t_t[m * c1: (m + 1) * c1]
                        vr = VaT[kb, m, j0: j0 + c1]
                        total = 0.0
                        for jj in range(c1):
                            total += tr[jj] * vr[jj]
                        acc[m] += W[L, m] * total
                lo = _odometer_step(idx, ends)
            inv = 1.0 / row_sum
            for m in range(dv):
                O[b, i, m] = acc[m] * inv
            lse[b, i] = row_max + math.log(row_sum)


@numba.njit(parallel=True, fastmath=config.FASTMATH, cache=config.CACHE)
def _backward_kernel(Q, Kpre, Vpre, offsets, KaT, VaT, Kz, KzT, Vz, VzT, key_batch, dO, lse, delta, scale, causal,
                     tile1, tile2, workers, dQ, dKpre, dVpre, dKa, dVa, dKz, dVz):
    """Streaming backward from the forward's ``lse``, ``delta = rowsum(dO ∘ O)``, float64.

    Operands as in :func:`_forward_kernel`, plus KzT (B,d·mz) and Vz (B,mz·dv). Per tile:
    P = exp(scale·S − lse_i), dS = V_t · G with G = dO_i ∘ W ∘ V_{t−1}, dZ = P ∘ (dS − δ_i);
    U = K_t^T dZ and PV = V_t^T P feed the gradients of set t − 1 and the sums R (over a
    prefix tuple: Σ dZ·K_{t−1}·K_t) and Z (Σ P·V_{t−1}·V_t), which give dQ and, with prefix and
    suffix products, the gradients of the first t − 2 sets. dQ (B,n,d) is written directly (a row
    belongs to one task); dKpre (W,B,M,d), dVpre (W,B,M,dv), dKa (W,B,ma,d), dVa (W,B,ma,dv),
    dKz (W,B,mz,d), dVz (W,B,mz,dv) are per-worker accumulators, summed by the caller.
    """
    B, n, d = Q.shape
    L = offsets.shape[0] - 1
    ma, dv = KaT.shape[2], VaT.shape[1]
    mz = Kz.shape[1] // d
    for w in numba.prange(workers):
        _wide_vectors()
        A = np.empty((L + 1, d))
        W = np.empty((L + 1, dv))
        C = np.empty((L + 1, d))
        idx = np.zeros(L, np.int64)
        ends = np.empty(L, np.int64)
        a_t = np.empty(d * tile1)
        a_tt = np.empty(tile1 * d)
        g_t = np.empty(dv * tile1)
        g_tt = np.empty(tile1 * dv)
        u_t = np.empty(d * tile1)
        pv_t = np.empty(dv * tile1)
        p_t = np.empty(tile2 * tile1)
        dz_t = np.empty(tile2 * tile1)
        dk_blk = np.empty(tile2 * d)
        dv_blk = np.empty(tile2 * dv)
        R = np.empty(d)
        Z = np.empty(dv)
        dq = np.empty(d)
        sk = np.empty(d)
        sv = np.empty(dv)
        for task in range(w, B * n, workers):
            b = task // n
            i = task - b * n
            kb = key_batch[b]
            end_a, end_z = _task_bounds(offsets, ma, mz, i, causal, ends)
            di = delta[b, i]
            li = lse[b, i]
            dq[:] = 0.0
            A[0, :] = Q[b, i, :]
            W[0, :] = 1.0
            C[0, :] = 1.0
            idx[:] = 0
            lo = 0
            while lo >= 0:
                _extend_prefixes(A, W, Kpre, Vpre, offsets, idx, kb, lo)
                for a in range(lo, L):
                    r = offsets[a] + idx[a]
                    for l in range(d):
                        C[a + 1, l] = C[a, l] * Kpre[kb, r, l]
                R[:] = 0.0
                Z[:] = 0.0
                for j0 in range(0, end_a, tile1):
                    c1 = min(tile1, end_a - j0)
                    for l in range(d):
                        pl = A[L, l]
                        for jj in range(c1):
                            x = pl * KaT[kb, l, j0 + jj]
                            a_t[l * c1 + jj] = x
                            a_tt[jj * d + l] = x
                    for m in range(dv):
                        gm = dO[b, i, m] * W[L, m]
                        for jj in range(c1):
                            x = gm * VaT[kb, m, j0 + jj]
                            g_t[m * c1 + jj] = x
                            g_tt[jj * dv + m] = x
                    for k0 in range(0, end_z, tile2):
                        c2 = min(tile2, end_z - k0)
                        first = k0 == 0
                        _mm(Kz[kb, k0 * d: (k0 + c2) * d], d, a_t, c1, p_t, c1, c2, d, c1, False)
                        _exp_shifted(p_t, c2 * c1, scale, li)
                        _mm(Vz[kb, k0 * dv: (k0 + c2) * dv], dv, g_t, c1, dz_t, c1, c2, dv, c1, False)
                        for jj in range(c2 * c1):
                            dz_t[jj] = p_t[jj] * (dz_t[jj] - di)
                        _mm(KzT[kb, k0:], mz, dz_t, c1, u_t, c1, d, c2, c1, not first)
                        _mm(VzT[kb, k0:], mz, p_t, c1, pv_t, c1, dv, c2, c1, not first)
                        _mm(dz_t, c1, a_tt, d, dk_blk, d, c2, c1, d, False)
                        _mm(p_t, c1, g_tt, dv, dv_blk, dv, c2, c1, dv, False)
                        for cc in range(c2):
                            for l in range(d):
                                dKz[w, kb, k0 + cc, l] += scale * dk_blk[cc * d + l]
                            for m in range(dv):
                                dVz[w, kb, k0 + cc, m] += dv_blk[cc * dv + m]
                    for l in range(d):
                        sl = scale * A[L, l]
                        for jj in range(c1):
                            u = u_t[l * c1 + jj]
                            dKa[w, kb, j0 + jj, l] += sl * u
                            R[l] += u * KaT[kb, l, j0 + jj]
                    for m in range(dv):
                        gm = dO[b, i, m] * W[L, m]
                        for jj in range(c1):
                            pv = pv_t[m * c1 + jj]
                            dVa[w, kb, j0 + jj, m] += gm * pv
                            Z[m] += pv * VaT[kb, m, j0 + jj]
                for l in range(d):
                    dq[l] += R[l] * C[L, l]
                sk[:] = 1.0
                sv[:] = 1.0
                for a in range(L - 1, -1, -1):
                    r = offsets[a] + idx[a]
                    for l in range(d):
                        dKpre[w, kb, r, l] += scale * R[l] * A[a, l] * sk[l]
                        sk[l] *= Kpre[kb, r, l]
                    for m in range(dv):
                        dVpre[w, kb, r, m] += dO[b, i, m] * Z[m] * W[a, m] * sv[m]
                        sv[m] *= Vpre[kb, r, m]
                lo = _odometer_step(idx, ends)
            for l in range(d):
                dQ[b, i, l] = scale * dq[l]


def memory_estimate(B: int, n: int, lengths: tuple[int, ...], d: int, dv: int, itemsize: int, workers: int, *,
                    for_backward: bool = True, key_entries: int | None = None) -> MemoryEstimate:
    """Peak extra bytes of the exact n-way CPU forward and backward, every problem-sized
    allocation counted (a 1-row key set is added for t = 1, as the kernels compute it).

    Forward: float64 working copies of Q and of every key and value set (the last two sets also
    transposed), O and lse, per-worker tiles; then the cast of O to the input dtype and the
    copies a forward for a backward hands out. Backward: the copies again plus dO, δ and dQ, the
    race-free per-worker accumulators (``workers`` × Bk·Σ m_a·(d + dv) floats), their sum, the
    casts of the gradients. The finiteness masks of the validation (one byte per entry) are a
    phase of their own. ``lengths`` are m_1, …, m_t; ``key_entries`` (default B) is the number
    of key/value batch entries, fewer than B with grouped or broadcast heads.
    """
    Bk = B if key_entries is None else key_entries
    ms = (1,) + tuple(lengths) if len(lengths) == 1 else tuple(lengths)
    f8, M = 8, sum(ms)
    narrow = 1 if itemsize != 8 else 0
    last_two = ms[-2] + ms[-1]
    copies = (B * n * d + Bk * (M + last_two) * (d + dv)) * f8
    out = B * n * (dv + 1) * f8
    tiles = workers * (config.KEY_TILE_1 * (4 * d + 4 * dv) + 2 * config.KEY_TILE_1 * config.KEY_TILE_2
                       + config.KEY_TILE_2 * (d + dv) + (len(ms) + 4) * (2 * d + 2 * dv)) * f8
    masks = max(B * n * d, Bk * max(ms) * max(d, dv))
    cast = B * n * dv * (narrow * itemsize + 1)
    handed_out = B * n * dv * itemsize + B * n * f8 if for_backward else 0
    forward = max(masks, copies + out + tiles, out + max(cast, handed_out))
    kept = out + handed_out
    grads = (B * n * d + Bk * M * (d + dv)) * f8
    accumulators = workers * Bk * M * (d + dv) * f8
    kernel = copies + B * n * (dv + 1) * f8 + accumulators + grads + tiles
    casts = 2 * grads + masks
    backward = max(masks, kernel, accumulators + 2 * grads, casts)
    return MemoryEstimate(*(int(MEMORY_SLACK * x) for x in (forward, kept, backward)))


def _padded(Q: np.ndarray, keys: tuple, values: tuple) -> tuple[tuple, tuple]:
    """The key and value sets the kernels compute on: t = 1 gets a first set of one row of ones."""
    if len(keys) > 1:
        return tuple(keys), tuple(values)
    Bk, d, dv = keys[0].shape[0], Q.shape[2], values[0].shape[2]
    return (np.ones((Bk, 1, d)),) + tuple(keys), (np.ones((Bk, 1, dv)),) + tuple(values)


def _f64(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float64)


def _t(x: np.ndarray) -> np.ndarray:
    """(B, rows, cols) -> (B, cols, rows) C-contiguous float64."""
    return np.ascontiguousarray(x.transpose(0, 2, 1), dtype=np.float64)


def _flat(x: np.ndarray) -> np.ndarray:
    return x.reshape(x.shape[0], -1)


def _operands(Q: np.ndarray, keys: tuple, values: tuple) -> tuple:
    """The kernels' float64 operands: Q, the stacked first t − 2 sets and their row offsets, set
    t − 1 transposed, set t flattened (keys) and transposed-flattened (values)."""
    keys, values = _padded(Q, keys, values)
    Bk, d, dv = keys[0].shape[0], Q.shape[2], values[0].shape[2]
    lengths = [k.shape[1] for k in keys[:-2]]
    offsets = np.concatenate(([0], np.cumsum(lengths, dtype=np.int64))).astype(np.int64)
    Kpre = np.concatenate([_f64(k) for k in keys[:-2]], axis=1) if lengths else np.empty((Bk, 0, d))
    Vpre = np.concatenate([_f64(v) for v in values[:-2]], axis=1) if lengths else np.empty((Bk, 0, dv))
    return _f64(Q), Kpre, Vpre, offsets, _t(keys[-2]), _t(values[-2]), keys[-1], values[-1]


def _shape_text(Q: np.ndarray, keys: tuple, values: tuple) -> str:
    B, n, d = Q.shape
    ms = ", ".join(str(k.shape[1]) for k in keys)
    shared = f" over {keys[0].shape[0]} key/value entries" if keys[0].shape[0] != B else ""
    return (f"t={len(keys)}, B={B}{shared}, n={n}, m=({ms}), d={d}, dv={values[0].shape[2]}, "
            f"{np.dtype(Q.dtype).name}")


def _key_batch(Q: np.ndarray, keys: tuple, key_batch: np.ndarray | None) -> np.ndarray:
    """The key/value entry of each of Q's B entries (the identity when there is one per entry)."""
    if key_batch is None:
        return np.arange(Q.shape[0], dtype=np.int64)
    return np.ascontiguousarray(key_batch, dtype=np.int64)


def forward(Q: np.ndarray, keys: tuple, values: tuple, scale: float, causal: bool, *,
            key_batch: np.ndarray | None = None, for_backward: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Exact n-way forward on batch-flattened, validated operands.

    Parameters
    ----------
    Q : ndarray, shape (B, n, d)
    keys, values : tuples of ndarrays, shapes (Bk, m_a, d) and (Bk, m_a, dv)
        float32 or float64 (computed in float64).
    scale : float
    causal : bool
        Keep only tuples with every ``j_a <= i`` (the caller checks ``n == m_a``).
    key_batch : ndarray of int, shape (B,), optional
        The key/value entry each query entry attends with (grouped or broadcast heads); default
        ``arange(B)`` (then Bk = B).
    for_backward : bool
        Whether the memory budget must also cover the backward that follows.

    Returns
    -------
    O : ndarray, shape (B, n, dv), float64
    lse : ndarray, shape (B, n), float64
        ``log Σ_j exp(logit[i, j])`` over the tuples of row i.

    Notes
    -----
    Time Θ(B·n·Π m_a·(d + dv)); extra memory O(B·n·d + Bk·Σ m_a·(d + dv)) plus O(tile1·tile2)
    per thread. Refuses (``ValueError``) before allocating when :func:`memory_estimate` passes
    ``config.MEMORY_BUDGET_BYTES``.
    """
    B, n, d = Q.shape
    dv = values[0].shape[2]
    estimate = memory_estimate(B, n, tuple(k.shape[1] for k in keys), d, dv, Q.dtype.itemsize,
                               numba.get_num_threads(), for_backward=for_backward, key_entries=keys[0].shape[0])
    check_memory(estimate.total if for_backward else estimate.forward,
                 f"the exact n-way {'forward and backward' if for_backward else 'forward'} "
                 f"({_shape_text(Q, keys, values)})", config.MEMORY_BUDGET_BYTES)
    Q64, Kpre, Vpre, offsets, KaT, VaT, Kz, Vz = _operands(Q, keys, values)
    O = np.empty((B, n, dv))
    lse = np.empty((B, n))
    _forward_kernel(Q64, Kpre, Vpre, offsets, KaT, VaT, _flat(_f64(Kz)), _flat(_t(Vz)), _key_batch(Q, keys, key_batch),
                    scale, causal, config.KEY_TILE_1, config.KEY_TILE_2, numba.get_num_threads(), O, lse)
    return O, lse


def backward(Q: np.ndarray, keys: tuple, values: tuple, scale: float, causal: bool, O: np.ndarray,
             lse: np.ndarray, dO: np.ndarray, *, key_batch: np.ndarray | None = None) -> tuple[np.ndarray, tuple, tuple]:
    """Exact n-way backward from the forward's float64 ``O`` and ``lse``.

    Parameters
    ----------
    Q, keys, values, scale, causal, key_batch
        As for :func:`forward`.
    O : ndarray, shape (B, n, dv), float64
    lse : ndarray, shape (B, n), float64
    dO : ndarray, shape (B, n, dv)
        Upstream gradient.

    Returns
    -------
    (dQ, dkeys, dvalues)
        float64, shaped like the operands (the key and value gradients summed over the query
        entries that share them); ``dkeys`` and ``dvalues`` are tuples in the order of ``keys``
        and ``values``.

    Notes
    -----
    δ = rowsum(dO ∘ O), dZ = P ∘ (dS − δ) with dS the contraction of dO with the value products;
    dKa takes the product of Q and the other t − 1 keys (prefix and suffix products), dVa of dO
    and the other values. Time Θ(B·n·Π m_a·(d + dv)); extra memory
    O(workers·Bk·Σ m_a·(d + dv)) float64 for the race-free accumulators.
    """
    workers = numba.get_num_threads()
    B, n, d = Q.shape
    dv = values[0].shape[2]
    Bk = keys[0].shape[0]
    check_memory(memory_estimate(B, n, tuple(k.shape[1] for k in keys), d, dv, Q.dtype.itemsize, workers,
                                 key_entries=Bk).backward,
                 f"the exact n-way backward ({_shape_text(Q, keys, values)}, {workers} "
                 f"thread{'s' if workers > 1 else ''} with their own gradient accumulators)",
                 config.MEMORY_BUDGET_BYTES)
    Q64, Kpre, Vpre, offsets, KaT, VaT, Kz, Vz = _operands(Q, keys, values)
    dO64 = _f64(dO)
    delta = np.einsum("bnm,bnm->bn", dO64, O)
    ma, mz = KaT.shape[2], Kz.shape[1]
    dQ = np.zeros((B, n, d))
    dKpre = np.zeros((workers,) + Kpre.shape)
    dVpre = np.zeros((workers,) + Vpre.shape)
    dKa = np.zeros((workers, Bk, ma, d))
    dVa = np.zeros((workers, Bk, ma, dv))
    dKz = np.zeros((workers, Bk, mz, d))
    dVz = np.zeros((workers, Bk, mz, dv))
    Kz64, Vz64 = _f64(Kz), _f64(Vz)
    _backward_kernel(Q64, Kpre, Vpre, offsets, KaT, VaT, _flat(Kz64), _flat(_t(Kz64)), _flat(Vz64), _flat(_t(Vz64)),
                     _key_batch(Q, keys, key_batch), dO64, _f64(lse), delta, scale, causal, config.KEY_TILE_1, config.KEY_TILE_2, workers,
                     dQ, dKpre, dVpre, dKa, dVa, dKz, dVz)
    dKpre, dVpre = dKpre.sum(axis=0), dVpre.sum(axis=0)
    L = offsets.shape[0] - 1
    dkeys = tuple(dKpre[:, offsets[a]: offsets[a + 1]] for a in range(L)) + (dKa.sum(axis=0), dKz.sum(axis=0))
    dvalues = tuple(dVpre[:, offsets[a]: offsets[a + 1]] for a in range(L)) + (dVa.sum(axis=0), dVz.sum(axis=0))
    if len(keys) == 1:
        dkeys, dvalues = dkeys[1:], dvalues[1:]
    return dQ, dkeys, dvalues
