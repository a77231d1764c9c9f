"""Exact streaming tensor attention on NVIDIA GPUs (numba-cuda).

The GPU twin of :mod:`tattn_numba.exact.cpu`: same ``forward``/``backward`` contract, no
n×m1×m2 buffer, O((n + m1 + m2)·(d + dv)) memory (SPEC §1–§2).

Work partition. A block owns a tile of ``CUDA_QUERY_TILE`` query rows; each row gets
``lanes = CUDA_THREADS_PER_BLOCK / CUDA_QUERY_TILE`` threads, and lane ``t`` takes the rows
``j1 = t, t + lanes, …`` of K1. For its (i, j1) a thread keeps ``a = scale·Q_i ∘ K1_j1`` in
registers and streams K2 and V2 through shared memory, ``CUDA_KEY_TILE`` rows at a time (the
whole block reads each staged row, so a row of K2 is loaded from global memory once per block
and j1-step, not once per thread). Each thread runs its own online softmax (running maximum,
running sum, rescaled accumulators in registers); at the end the lanes of a row merge their
(maximum, sum, accumulator) triples with a tree reduction in shared memory, which is
deterministic.

Backward. One kernel, launched twice: with (K1, V1) as the thread-owned operand and (K2, V2)
streamed it produces dQ, dK1 and dV1; with the roles swapped (the logit is symmetric in the
two keys) it produces dK2 and dV2. Per (i, j1) a thread accumulates u = Σ_j2 dZ·K2_j2 and
Σ_j2 P·V2_j2, adds scale·Q_i∘u into dK1[j1] and dO_i∘(Σ P·V2) into dV1[j1] with float64
atomics (summing over the query rows, so their order, and the last bits of dK1, dK2, dV1, dV2,
vary between runs), and reduces scale·K1_j1∘u over its lanes into dQ[i] deterministically.
This recomputes the logits once more than a single fused pass would, and needs no per-thread
copies of the key gradients.

Precision (:func:`precision`, the CPU's rule): float32 inputs are computed in float32 — logits,
exponentials (``expf``), the value products and, in the backward, dS, dZ and the per-thread
sums U and Σ P·V — with float64 softmax statistics, output accumulator, atomics and dQ sums.
float64 inputs, and float32 inputs whose intermediates could overflow float32, run the float64
kernels. The error contract is FlashAttention's (docs/exact_kernels.md).

Grouped heads: block (b, query tile) reads key/value entry ``key_batch[b]``
(:class:`tattn_numba.heads.HeadLayout`); the atomics sum a group's key gradients in place.

Kernels are specialised per (d, dv), working precision and launch shape (register arrays need constant sizes) and
cached for the process.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from .. import _cuda, _device, config
from .._validation import AttentionInputs, check_logit_range
from ..mask import key_range
from .precision import Precision, choose

cuda = _cuda.require()

OPTIONS = frozenset()


@cuda.jit(device=True)
def _lane_reduce(red, tid, lane, lanes, take_max):
    """Tree reduction of ``red[tid]`` over the ``lanes`` consecutive threads of a query row;
    the row's result lands in ``red[tid - lane]``. Every thread of the block must call it."""
    stride = lanes // 2
    while stride > 0:
        if lane < stride:
            if take_max:
                red[tid] = max(red[tid], red[tid + stride])
            else:
                red[tid] += red[tid + stride]
        cuda.syncthreads()
        stride //= 2


_key_range = cuda.jit(device=True)(key_range)


@cuda.jit(device=True)
def _query_tile(n, query_tile, lanes):
    """Where this thread works: batch entry ``b``, query row ``i`` (``valid`` if i < n), its
    thread index and lane, and the block's first and last query rows. The block covers the
    query tile ``blockIdx.x mod ceil(n / query_tile)`` of batch entry
    ``blockIdx.x div ceil(n / query_tile)``."""
    tiles = (n + query_tile - 1) // query_tile
    b = cuda.blockIdx.x // tiles
    i0 = (cuda.blockIdx.x - b * tiles) * query_tile
    tid = cuda.threadIdx.x
    q = tid // lanes
    lane = tid - q * lanes
    i = i0 + q
    return b, i, tid, lane, i < n, i0, min(n, i0 + query_tile) - 1


@cuda.jit(device=True)
def _key_box(causal, width, m, i, valid, first, last):
    """The key rows of one key set for this thread and its block (:func:`tattn_numba.mask.key_range`):
    ``block_start, block_end`` bound the loops every thread of the block runs (barriers
    inside: the union of the rows ``first..last``, whose ranges are nondecreasing), and
    ``start, end`` this thread's own row (empty past the last row)."""
    block_start, _ = _key_range(causal, width, first, m)
    _, block_end = _key_range(causal, width, last, m)
    start, end = _key_range(causal, width, i, m)
    if not valid:
        end = start
    return block_start, block_end, start, end


@cuda.jit(device=True)
def _stage_rows(src, b, r0, rows, dst, tid, threads):
    """Copy ``src[b, r0:r0 + rows]`` into the shared tile ``dst`` (zeros past the end)."""
    cols = dst.shape[1]
    for idx in range(tid, dst.shape[0] * cols, threads):
        r = idx // cols
        c = idx - r * cols
        dst[r, c] = src[b, r0 + r, c] if r < rows else 0.0


@cuda.jit(device=True)
def _stage_key_tile(K, V, b, r0, keys, values, tid, threads):
    """Stage rows ``r0 : r0 + keys.shape[0]`` of K[b] and V[b] in the shared tiles ``keys`` and
    ``values``, between two barriers (no thread still reads the previous tile, every thread
    sees the new one). Every thread of the block must call it."""
    rows = min(keys.shape[0], K.shape[1] - r0)
    cuda.syncthreads()
    _stage_rows(K, b, r0, rows, keys, tid, threads)
    _stage_rows(V, b, r0, rows, values, tid, threads)
    cuda.syncthreads()


def _launch_shape(d: int, dv: int, itemsize: int = 8) -> tuple[int, int, int, int]:
    """(threads per block, query rows per block, lanes per row, key rows per shared tile) for
    key and value tiles of ``itemsize``-byte entries."""
    threads = config.CUDA_THREADS_PER_BLOCK
    query_tile = config.CUDA_QUERY_TILE
    if threads & (threads - 1) or query_tile & (query_tile - 1) or query_tile > threads:
        raise ValueError(
            "config.CUDA_THREADS_PER_BLOCK and config.CUDA_QUERY_TILE must be powers of two with "
            f"CUDA_QUERY_TILE <= CUDA_THREADS_PER_BLOCK, got {threads} and {query_tile}"
        )
    key_tile = max(1, min(config.CUDA_KEY_TILE, config.CUDA_TILE_BYTES // (itemsize * (d + dv))))
    return threads, query_tile, threads // query_tile, key_tile


@lru_cache(maxsize=None)
def _forward_kernel(d: int, dv: int, compute: str, threads: int, query_tile: int, lanes: int, key_tile: int):
    """The forward kernel for one (d, dv), working precision (``"float32"`` or ``"float64"``) and
    launch shape; grid: one block per (b, query tile).

    float64 folds the scale into the query row (a = scale·Q_i ∘ K1_j1, logits as before);
    float32 keeps a = Q_i ∘ K1_j1 unscaled and exponentiates (s − s_max)·scale, an exact
    difference near the maximum times one rounded product, so a weight's argument is rounded at
    eps32 of itself rather than of the logit. Softmax sums and the output accumulator are float64;
    a key tile's weights are summed in the working precision first.
    """
    real = np.dtype(compute).type
    folded = compute == "float64"

    @cuda.jit
    def kernel(Q, K1, K2, V1, V2, key_batch, scale, causal, width1, width2, O, lse):
        b, i, tid, lane, valid, first, last = _query_tile(Q.shape[1], query_tile, lanes)
        kb = key_batch[b]
        block_start1, block_end1, start1, end1 = _key_box(causal, width1, K1.shape[1], i, valid, first, last)
        block_start2, block_end2, start2, end2 = _key_box(causal, width2, K2.shape[1], i, valid, first, last)
        row_factor = scale if folded else 1.0
        logit_scale = real(1.0) if folded else real(scale)

        k2s = cuda.shared.array((key_tile, d), real)
        v2s = cuda.shared.array((key_tile, dv), real)
        red = cuda.shared.array(threads, np.float64)
        a = cuda.local.array(d, real)
        t = cuda.local.array(dv, real)
        acc = cuda.local.array(dv, np.float64)
        for m in range(dv):
            acc[m] = 0.0
        row_max = real(-math.inf)
        row_sum = 0.0

        for j10 in range(block_start1, block_end1, lanes):
            j1 = j10 + lane
            active = j1 >= start1 and j1 < end1
            if active:
                for l in range(d):
                    a[l] = real(row_factor * float(Q[b, i, l]) * float(K1[kb, j1, l]))
            for m in range(dv):
                t[m] = real(0.0)
            for k0 in range(block_start2, block_end2, key_tile):
                _stage_key_tile(K2, V2, kb, k0, k2s, v2s, tid, threads)
                if active:
                    tile_sum = real(0.0)
                    for jj in range(max(0, start2 - k0), min(key_tile, end2 - k0)):
                        s = real(0.0)
                        for l in range(d):
                            s += a[l] * k2s[jj, l]
                        if s > row_max:
                            corr = math.exp((row_max - s) * logit_scale)
                            row_sum *= corr
                            tile_sum *= corr
                            for m in range(dv):
                                t[m] *= corr
                                acc[m] *= corr
                            row_max = s
                        p = math.exp((s - row_max) * logit_scale)
                        tile_sum += p
                        for m in range(dv):
                            t[m] += p * v2s[jj, m]
                    row_sum += tile_sum
            if active:
                for m in range(dv):
                    acc[m] += float(V1[kb, j1, m]) * float(t[m])

        red[tid] = row_max
        cuda.syncthreads()
        _lane_reduce(red, tid, lane, lanes, True)
        top = red[tid - lane]
        cuda.syncthreads()
        corr = math.exp((float(row_max) - top) * float(logit_scale)) if row_max > -math.inf else 0.0
        red[tid] = row_sum * corr
        cuda.syncthreads()
        _lane_reduce(red, tid, lane, lanes, False)
        total = red[tid - lane]
        cuda.syncthreads()
        for m in range(dv):
            red[tid] = acc[m] * corr
            cuda.syncthreads()
            _lane_reduce(red, tid, lane, lanes, False)
            if lane == 0 and valid:
                O[b, i, m] = red[tid] / total
            cuda.syncthreads()
        if lane == 0 and valid:
            lse[b, i] = top * float(logit_scale) + math.log(total)

    return kernel


@lru_cache(maxsize=None)
def _backward_kernel(d: int, dv: int, compute: str, threads: int, query_tile: int, lanes: int, key_tile: int):
    """The backward kernel for one (d, dv), working precision and launch shape: threads own rows
    of (Ka, Va), the block streams (Kb, Vb); accumulates dKa, dVa (atomics) and, with
    ``write_dq``, writes dQ.

    float32 exponentiates ((s − hi) − lo)·scale with hi + lo = lse/scale split into two float32
    numbers (the difference with the dominant logits is then exact), and sums dS, dZ, U and the
    value products in float32 per thread; the atomics and dQ add in float64.
    """
    real = np.dtype(compute).type
    folded = compute == "float64"

    @cuda.jit
    def kernel(Q, Ka, Kb, Va, Vb, key_batch, dO, lse, delta, scale, causal, width_a, width_b, write_dq, dQ, dKa,
               dVa):
        b, i, tid, lane, valid, first, last = _query_tile(Q.shape[1], query_tile, lanes)
        kb = key_batch[b]
        block_starta, block_enda, starta, enda = _key_box(causal, width_a, Ka.shape[1], i, valid, first, last)
        block_startb, block_endb, startb, endb = _key_box(causal, width_b, Kb.shape[1], i, valid, first, last)
        row_factor = scale if folded else 1.0
        logit_scale = real(1.0) if folded else real(scale)
        shift = lse[b, i] / float(logit_scale) if valid else 0.0
        shift_hi = real(shift)
        shift_lo = real(shift - float(shift_hi))
        di = real(delta[b, i]) if valid else real(0.0)

        kbs = cuda.shared.array((key_tile, d), real)
        vbs = cuda.shared.array((key_tile, dv), real)
        red = cuda.shared.array(threads, np.float64)
        a = cuda.local.array(d, real)
        g = cuda.local.array(dv, real)
        u = cuda.local.array(d, real)
        pv = cuda.local.array(dv, real)
        dq = cuda.local.array(d, np.float64)
        for l in range(d):
            dq[l] = 0.0

        for ja0 in range(block_starta, block_enda, lanes):
            ja = ja0 + lane
            active = ja >= starta and ja < enda
            if active:
                for l in range(d):
                    a[l] = real(row_factor * float(Q[b, i, l]) * float(Ka[kb, ja, l]))
                for m in range(dv):
                    g[m] = real(float(dO[b, i, m]) * float(Va[kb, ja, m]))
            for l in range(d):
                u[l] = real(0.0)
            for m in range(dv):
                pv[m] = real(0.0)
            for k0 in range(block_startb, block_endb, key_tile):
                _stage_key_tile(Kb, Vb, kb, k0, kbs, vbs, tid, threads)
                if active:
                    for jj in range(max(0, startb - k0), min(key_tile, endb - k0)):
                        s = real(0.0)
                        for l in range(d):
                            s += a[l] * kbs[jj, l]
                        p = math.exp(((s - shift_hi) - shift_lo) * logit_scale)
                        ds = real(0.0)
                        for m in range(dv):
                            ds += g[m] * vbs[jj, m]
                            pv[m] += p * vbs[jj, m]
                        dz = p * (ds - di)
                        for l in range(d):
                            u[l] += dz * kbs[jj, l]
            if active:
                for l in range(d):
                    cuda.atomic.add(dKa, (kb, ja, l), scale * float(Q[b, i, l]) * float(u[l]))
                    dq[l] += scale * float(Ka[kb, ja, l]) * float(u[l])
                for m in range(dv):
                    cuda.atomic.add(dVa, (kb, ja, m), float(dO[b, i, m]) * float(pv[m]))

        if write_dq:
            for l in range(d):
                cuda.syncthreads()
                red[tid] = dq[l]
                cuda.syncthreads()
                _lane_reduce(red, tid, lane, lanes, False)
                if lane == 0 and valid:
                    dQ[b, i, l] = red[tid]

    return kernel


def _abs_maxima(*arrays) -> tuple[np.ndarray, ...]:
    """Host column maxima (B, d) of |x| for device arrays (B, n, d)."""
    return tuple(np.maximum(hi, -lo).astype(np.float64) for lo, hi in (_device.column_extrema(x) for x in arrays))


def precision(inputs: AttentionInputs, dO=None) -> Precision:
    """The working precision of the exact CUDA kernels (:func:`tattn_numba.exact.precision.choose`
    on the device arrays' column maxima), after rejecting logits that could overflow float64. The
    float32 kernels keep the scale out of the products, so a float32 choice that needs it folded
    runs the float64 kernels instead (those always fold it)."""
    logit_maxima = _abs_maxima(inputs.Q, inputs.K1, inputs.K2)
    check_logit_range(inputs.scale, *logit_maxima, inputs.key_batch)
    values = None if dO is None else _abs_maxima(dO, inputs.V1, inputs.V2)
    chosen = choose(inputs.dtype, inputs.scale, inputs.key_batch, logit_maxima, values)
    if chosen.dtype == np.float32 and not chosen.folded:
        return chosen
    return Precision(np.dtype(np.float64), True)


def _configured(kernel_factory, inputs: AttentionInputs, compute: Precision):
    """The kernel for these inputs' (d, dv) and working precision, configured with one block per
    (batch entry, query tile)."""
    B, n, d = inputs.Q.shape
    dv = inputs.V1.shape[2]
    threads, query_tile, lanes, key_tile = _launch_shape(d, dv, compute.dtype.itemsize)
    kernel = kernel_factory(d, dv, compute.dtype.name, threads, query_tile, lanes, key_tile)
    return kernel[B * -(-n // query_tile), threads]


def forward(inputs: AttentionInputs, *, for_backward: bool = True):
    """Exact forward on the GPU: float64 device arrays O (B, n, dv) and lse (B, n), no
    certificate, nothing else saved.

    Time Θ(B·n·m1·m2·(d + dv)) on the device; extra memory O(B·n·dv) for the outputs.
    """
    compute = precision(inputs)
    B, n, _ = inputs.Q.shape
    O = _device.device_empty((B, n, inputs.V1.shape[2]), np.float64)
    lse = _device.device_empty((B, n), np.float64)
    causal, width1, width2 = inputs.mask.kernel_args(inputs.K1.shape[1], inputs.K2.shape[1])
    _configured(_forward_kernel, inputs, compute)(
        inputs.Q, inputs.K1, inputs.K2, inputs.V1, inputs.V2, _device.to_device(inputs.key_batch), inputs.scale,
        causal, width1, width2, O, lse
    )
    return O, lse, None, None


def backward(inputs: AttentionInputs, O, lse, certificate: None, saved: None, dO):
    """Exact backward on the GPU from the forward's float64 ``O`` and ``lse`` (device arrays).

    Returns float64 device arrays (dQ, dK1, dK2, dV1, dV2). The key and value gradients are
    summed over query rows with float64 atomics: correct to rounding, but the order of the
    additions (hence the last bits) can change from run to run.

    Time Θ(B·n·m1·m2·(d + dv)) per launch, two launches; extra memory O(B·(n + m1 + m2)·(d + dv)).
    """
    delta = _device.row_dots(dO, O)
    dQ, dK1, dK2, dV1, dV2 = (_device.device_zeros(tuple(x.shape)) for x in
                              (inputs.Q, inputs.K1, inputs.K2, inputs.V1, inputs.V2))
    kernel = _configured(_backward_kernel, inputs, precision(inputs, dO))
    Q, K1, K2, V1, V2 = inputs.Q, inputs.K1, inputs.K2, inputs.V1, inputs.V2
    causal, width1, width2 = inputs.mask.kernel_args(K1.shape[1], K2.shape[1])
    key_batch = _device.to_device(inputs.key_batch)
    # Threads own rows of the first key (dQ, dK1, dV1), then of the second (dK2, dV2).
    for Ka, Kb, Va, Vb, width_a, width_b, dKa, dVa, write_dq in (
        (K1, K2, V1, V2, width1, width2, dK1, dV1, True),
        (K2, K1, V2, V1, width2, width1, dK2, dV2, False),
    ):
        kernel(Q, Ka, Kb, Va, Vb, key_batch, dO, lse, delta, inputs.scale, causal, width_a, width_b, write_dq, dQ,
               dKa, dVa)
    return dQ, dK1, dK2, dV1, dV2
