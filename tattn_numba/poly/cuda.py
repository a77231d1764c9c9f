"""The polynomial surrogate on an NVIDIA GPU: almost-linear forward and gradient (SPEC §5).

The same algebra as :mod:`.cpu` (Alman–Song 2023 for the forward, Liang–Shi–Song–Zhou 2024
for the gradient), with every array on the device and computed in float64:

* the feature maps U1^T, U2^T, U3^T (features × rows) by one thread per row walking the
  multi-index table (:func:`._cuda_kernels._monomials`);
* the low-rank contractions U^T·[columns] and U·(summary) by the shared-memory tiled product of
  :mod:`._cuda_gemm`, with small elementwise and per-row kernels around them;
* rows streamed in chunks of ``plan.chunk_rows``, so extra memory is O(chunk·r + r·d·dv);
* the causal mask by the chunked scans of :mod:`._cuda_kernels` (a prefix scan per summary
  column forward; backward, a prefix pass storing the state at every chunk end, then a reverse
  pass that downdates it row by row while carrying suffix sums, as :mod:`.causal` does);
* causal sliding windows narrower than n by the windowed scans of :mod:`._cuda_kernels`, the
  CPU's running window sums with exact restarts every w rows (:mod:`.causal`, its section comment
  on causal sliding windows), performing per state and accumulator entry the CPU's sums in its order.

The plan (the certificate) is built on the host from :class:`~.plan.InputStatistics` computed
on the device: O(B·(n + d + dv)) numbers cross to the host, never the inputs.

Every reduction is deterministic (tree sums, fixed-order products); the only float atomic is a
maximum. The batch entries run one after another, each as a sequence of kernel launches.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import _device, config
from .._cuda import require
from .._validation import AttentionInputs
from . import _cuda_kernels as kernels
from ._blocks import SummaryLayout, chunks
from ._cuda_gemm import gemm
from .causal import window_top
from .features import multi_index_table
from .options import NAMES
from .plan import (
    InputStatistics,
    PolyPlan,
    balancing_maxima,
    check_certified,
    keeps_key_summaries,
    make_plan,
    normaliser_error,
)

cuda = require()

OPTIONS = NAMES


def _operands(inputs: AttentionInputs) -> tuple:
    """Q, K1, K2, V1, V2 as float64 device arrays (cast once on the device)."""
    return tuple(_device.cast(x, np.float64) for x in (inputs.Q, inputs.K1, inputs.K2, inputs.V1, inputs.V2))


def input_statistics(Q, K1, K2, V1, V2, key_batch: np.ndarray) -> InputStatistics:
    """:class:`~.plan.InputStatistics` of float64 device arrays, computed on the device.

    Column extrema by :func:`tattn_numba._device.column_extrema`, the key rows' largest
    fourth-power sums and the query rows' weighted ℓ1 and squared ℓ2 sums by one thread per row;
    only these O(B·(n + d + dv)) numbers are copied to the host. Time O((n + m1 + m2)·(d + dv)).
    The key and value statistics are computed per key/value entry and read per batch entry
    through ``key_batch`` (B,).
    """
    extrema = [_device.column_extrema(Q)] + [tuple(x[key_batch] for x in _device.column_extrema(y))
                                             for y in (K1, K2, V1, V2)]
    (lo1, hi1), (lo2, hi2) = extrema[1], extrema[2]
    k12 = np.maximum(hi1, -lo1) * np.maximum(hi2, -lo2)
    B, n, _ = Q.shape
    weighted_l1 = _device.device_empty((B, n), np.float64)
    squares = _device.device_empty((B, n), np.float64)
    _device.launch(kernels._query_row_sums, B * n, Q, _device.to_device(k12), weighted_l1, squares)
    fourth_powers = []
    for K in (K1, K2):
        largest = _device.device_full((K.shape[0],), 0.0)
        _device.launch(kernels._max_row_fourth_powers, K.shape[0] * K.shape[1], K, largest)
        fourth_powers.append(np.sqrt(np.sqrt(_device.to_host(largest)))[key_batch])
    return InputStatistics(
        *(bound for pair in extrema for bound in pair),
        K1_max_4norm=fourth_powers[0], K2_max_4norm=fourth_powers[1],
        Q_weighted_l1=_device.to_host(weighted_l1), Q_l2=np.sqrt(_device.to_host(squares)),
    )


class _Balanced(NamedTuple):
    """Device arrays of one call, all float64: the operands, the balanced variables
    q̃ = s·Q·κ1·κ2/R, K1/κ1, K2/κ2 (as :mod:`.cpu` builds them), the per-row coefficients
    (B, n, g + 1), the multi-index table and a vector of ones (max(n, m1, m2),)."""

    Q: object
    K1: object
    K2: object
    V1: object
    V2: object
    Qt: object
    K1t: object
    K2t: object
    coefficients: object
    table: tuple
    ones: object

    @property
    def rank(self) -> int:
        return self.table[0].shape[0]


def _balance(operands: tuple, plan: PolyPlan, scale: float, statistics: InputStatistics,
             key_batch: np.ndarray) -> _Balanced:
    """Build :class:`_Balanced` from the float64 operands; O((n + m1 + m2)·d) on the device."""
    Q, K1, K2, V1, V2 = operands
    B, n, d = Q.shape
    k1 = balancing_maxima(statistics.K1_min, statistics.K1_max)
    k2 = balancing_maxima(statistics.K2_min, statistics.K2_max)
    first_use = np.unique(key_batch, return_index=True)[1]  # a batch entry of every key entry
    radius = np.asarray(plan.radius).reshape(B, n)
    row_factor = scale / np.where(radius > 0.0, radius, 1.0)
    ones = _device.device_full((max(n, K1.shape[1], K2.shape[1]),), 1.0)
    balanced = []
    for X, rows, columns in ((Q, row_factor, k1 * k2), (K1, None, 1.0 / k1[first_use]),
                             (K2, None, 1.0 / k2[first_use])):
        out = _device.device_empty(X.shape, np.float64)
        row_factors = _device.device_full(X.shape[:2], 1.0) if rows is None else _device.to_device(rows)
        _device.launch(kernels._scale_rows_and_columns, X.size, X, row_factors, _device.to_device(columns), out)
        balanced.append(out)
    table = multi_index_table(d, plan.degree)
    coefficients = _device.to_device(np.asarray(plan.coefficients).reshape(B, n, -1))
    return _Balanced(Q, K1, K2, V1, V2, *balanced, coefficients,
                     tuple(_device.to_device(x) for x in table), ones)


class _Saved(NamedTuple):
    """What the forward hands to the backward: the balanced variables and, when the budget
    allows (:func:`~.plan.keeps_key_summaries`), the wide key summaries per key/value entry."""

    balanced: _Balanced
    key_summaries: list | None


def _features(v: _Balanced, X, coefficients=None):
    """U^T (r, rows) of balanced rows X (rows, d); query side (U1) when ``coefficients`` is given."""
    out = _device.device_empty((v.rank, X.shape[0]), np.float64)
    weighted = coefficients is not None
    _device.launch(kernels._monomials, X.shape[0], X, coefficients if weighted else v.coefficients[0], *v.table,
            weighted, out)
    return out


def _columns(c, X, Y, width: int):
    """[c | X | c·Y | X⊙Y] (rows, width) for a chunk of rows."""
    out = _device.device_empty((X.shape[0], width), np.float64)
    _device.launch(kernels._fill_columns, out.size, c, X, Y, out)
    return out


def _hadamard(left, right, columns: list[int]):
    """``left[:, columns] ∘ right[:, columns]`` (r, len(columns))."""
    out = _device.device_empty((left.shape[0], len(columns)), np.float64)
    index = _device.to_device(np.asarray(columns, np.int64))
    _device.launch(kernels._hadamard_columns, out.size, left, right, index, out)
    return out


def _product(UT, summary):
    """U·summary (rows, k) from U^T (r, rows) and a summary (r, k)."""
    out = _device.device_empty((UT.shape[1], summary.shape[1]), np.float64)
    return gemm(UT, summary, out, transpose_a=True)


def _key_summary(v: _Balanced, b: int, Kt, K, V, width: int, chunk: int):
    """U^T [1 | V | K | V⊙K] (r, width) of key/value entry ``b``, streamed over row chunks."""
    total = _device.device_empty((v.rank, width), np.float64)
    for index, rows in enumerate(chunks(K.shape[1], chunk)):
        gemm(_features(v, Kt[b, rows]), _columns(v.ones[rows], V[b, rows], K[b, rows], width), total,
             accumulate=index > 0)
    return total


def _key_summaries(v: _Balanced, b: int, width: int, chunk: int) -> tuple:
    """(U2^T [1 | V1 | K1 | V1⊙K1], U3^T [1 | V2 | K2 | V2⊙K2]) of key/value entry ``b``, (r, width) each."""
    return (_key_summary(v, b, v.K1t, v.K1, v.V1, width, chunk),
            _key_summary(v, b, v.K2t, v.K2, v.V2, width, chunk))


def _raise_if_bad(bad, plan: PolyPlan) -> None:
    """Raise the CPU path's normaliser error when the device counter ``bad`` (1,) is non-zero."""
    if int(_device.to_host(bad)[0]):
        raise normaliser_error(plan)


def forward(inputs: AttentionInputs, *, for_backward: bool = True, tol=None, degree=None, family="chebyshev",
            memory_budget=None):
    """Surrogate forward on the GPU; the same results as :func:`tattn_numba.poly.cpu.forward`.

    Returns float64 device arrays O (B, n, dv) and lse (B, n) = log w̃, the plan (on the host)
    and what the backward reuses (None unless ``for_backward``). Time O((n + m1 + m2)·r·dv) per
    batch entry, O(n·r·dv) sequential steps of r / threads each with the causal mask; extra
    memory O(chunk·r + r·dv), plus 2·B·r·(1 + dv + d + dv·d) floats of key summaries kept for
    the backward when they fit a quarter of the memory budget.

    Raises
    ------
    ValueError
        As the CPU implementation: the degree is too low to certify, or a normaliser is not
        positive.
    """
    operands = _operands(inputs)
    statistics = input_statistics(*operands, inputs.key_batch)
    plan = make_plan(inputs, tol=tol, degree=degree, family=family, memory_budget=memory_budget,
                     statistics=statistics)
    check_certified(plan)
    v = _balance(operands, plan, inputs.scale, statistics, inputs.key_batch)
    B, n, d = inputs.Q.shape
    dv = inputs.V1.shape[2]
    O = _device.device_empty((B, n, dv), np.float64)
    lse = _device.device_empty((B, n), np.float64)
    bad = _device.to_device(np.zeros(1, dtype=np.int64))
    keep = keeps_key_summaries(for_backward, inputs.mask, inputs.K1.shape[0], plan, d, dv, memory_budget,
                              inputs.held_bytes)
    layout = SummaryLayout(d, dv)
    width = layout.wide if keep else layout.narrow
    saved = {} if keep else None
    for kb, group in inputs.heads.groups():
        if not inputs.mask.is_full:
            widths = inputs.mask.narrow_window(n)
            for b in group:
                if widths is None:
                    _causal_forward(v, b, kb, plan.chunk_rows, O, lse, bad)
                else:
                    _window_forward(v, b, kb, plan.chunk_rows, widths, O, lse, bad)
            continue
        left, right = _key_summaries(v, kb, width, plan.chunk_rows)
        if keep:
            saved[kb] = (left, right)
        summary = _hadamard(left, right, list(range(layout.narrow)))
        for b in group:
            for rows in chunks(n, plan.chunk_rows):
                out = _product(_features(v, v.Qt[b, rows], v.coefficients[b, rows]), summary)
                _device.launch(kernels._normalise, out.shape[0], out, O[b, rows], lse[b, rows], bad)
    _raise_if_bad(bad, plan)
    return O, lse, plan, (_Saved(v, saved) if for_backward else None)


def _causal_forward(v: _Balanced, b: int, kb: int, chunk: int, O, lse, bad) -> None:
    """Causal forward of batch entry ``b`` (keys of entry ``kb``): prefix states P2, P3
    (1 + dv, r), one block per column."""
    n, d = v.Q.shape[1:]
    threads = config.CUDA_THREADS_PER_BLOCK
    k = SummaryLayout(d, v.V1.shape[2]).narrow
    P2, P3 = _device.device_full((k, v.rank), 0.0), _device.device_full((k, v.rank), 0.0)
    partial = _device.device_empty((k, threads), np.float64)
    for rows in chunks(n, chunk):
        out = _device.device_empty((rows.stop - rows.start, k), np.float64)
        kernels._causal_forward_scan[k, threads](
            _features(v, v.Qt[b, rows], v.coefficients[b, rows]),
            _features(v, v.K1t[kb, rows]), _columns(v.ones[rows], v.V1[kb, rows], v.K1[kb, rows], k),
            _features(v, v.K2t[kb, rows]), _columns(v.ones[rows], v.V2[kb, rows], v.K2[kb, rows], k),
            P2, P3, partial, out, True,
        )
        _device.launch(kernels._normalise, out.shape[0], out, O[b, rows], lse[b, rows], bad)


def backward(inputs: AttentionInputs, O, lse, plan: PolyPlan, saved, dO):
    """Surrogate gradient on the GPU, float64 device arrays (dQ, dK1, dK2, dV1, dV2); the same
    results as :func:`tattn_numba.poly.cpu.backward`.

    Time O((n + m1 + m2)·r·d·dv) per batch entry; extra memory O(chunk·(r + d·dv) + r·d·dv), and
    with the causal mask one r×(1 + dv + d + dv·d) state per chunk of rows, with a window six such
    states and the features of up to chunk + 2·max(w) rows.
    """
    B, n, d = inputs.Q.shape
    dv = inputs.V1.shape[2]
    s = inputs.scale
    chunk = plan.chunk_rows
    v = saved.balanced
    grads = [_device.device_empty(x.shape, np.float64) for x in (inputs.Q, inputs.K1, inputs.K2, inputs.V1, inputs.V2)]
    dQ, dK1, dK2, dV1, dV2 = grads
    dO = _device.cast(dO, np.float64)
    delta = _device.row_dots(dO, O)
    bad = _device.to_device(np.zeros(1, dtype=np.int64))
    layout = SummaryLayout(d, dv)
    width = layout.wide
    S, K, A = layout.indices()
    for kb, group in inputs.heads.groups():
        if not inputs.mask.is_full:
            _causal_backward_group(v, group, kb, dO, delta, s, chunk, grads, inputs.mask.narrow_window(n))
            continue
        left, right = saved.key_summaries[kb] if saved.key_summaries is not None else _key_summaries(v, kb, width, chunk)
        query_side = _hadamard(left, right, [0] + A + K)
        summary_q = _device.device_empty((v.rank, width), np.float64)
        accumulate = False
        for b in group:  # the query summaries of the group add up: one key pass per key/value entry
            for rows in chunks(n, chunk):
                U1T = _features(v, v.Qt[b, rows], v.coefficients[b, rows])
                T = _product(U1T, query_side)
                w = _device.device_empty((T.shape[0],), np.float64)
                _device.launch(kernels._query_gradient_rows, T.shape[0], T, dO[b, rows], delta[b, rows], s, w,
                               dQ[b, rows], bad)
                _device.launch(kernels._divide_columns, U1T.size, U1T, w)
                gemm(U1T, _columns(delta[b, rows], dO[b, rows], v.Q[b, rows], width), summary_q, accumulate=accumulate)
                accumulate = True
        for Kt, V, other, dK, dV in ((v.K1t, v.V1, right, dK1, dV1), (v.K2t, v.V2, left, dK2, dV2)):
            key_side = _hadamard(other, summary_q, S + A + K)
            for rows in chunks(Kt.shape[1], chunk):
                T = _product(_features(v, Kt[kb, rows]), key_side)
                _device.launch(kernels._key_gradient_rows, T.shape[0], T, V[kb, rows], s, dV[kb, rows], dK[kb, rows])
    _raise_if_bad(bad, plan)
    return dQ, dK1, dK2, dV1, dV2


def _causal_backward_group(v: _Balanced, group: np.ndarray, kb: int, dO, delta, scale: float, chunk: int,
                           grads, widths: tuple[int, int] | None = None) -> None:
    """Causal (``widths`` None) or windowed gradients of the batch entries ``group`` that share
    key/value entry ``kb``: each entry's key and value gradients go to a slot of its own, summed
    into entry ``kb`` after."""
    dQ, *key_grads = grads

    def entry(b, targets):
        if widths is None:
            _causal_backward(v, b, kb, dO, delta, scale, chunk, dQ, *targets)
        else:
            _window_backward(v, b, kb, dO, delta, scale, chunk, widths, dQ, *targets)

    if len(group) == 1:
        entry(group[0], [g[kb] for g in key_grads])
        return
    slots = [_device.device_empty((len(group),) + tuple(g.shape[1:]), np.float64) for g in key_grads]
    for slot, b in enumerate(group):
        entry(b, [x[slot] for x in slots])
    for g, x in zip(key_grads, slots):
        g[kb].copy_to_device(_device.sum_batches(x, np.zeros(len(group), dtype=np.int64), 1)[0])


def _causal_backward(v: _Balanced, b: int, kb: int, dO, delta, scale: float, chunk: int, dQ, dK1, dK2, dV1,
                     dV2) -> None:
    """Causal gradient of batch entry ``b`` with key/value entry ``kb`` (see :mod:`.causal`): a
    prefix pass that stores the wide states P2, P3 at every chunk end, then the chunks in
    reverse, each from its stored state. Writes dQ[b] and the key/value gradients (m, ·) given."""
    n, d = v.Q.shape[1:]
    dv = v.V1.shape[2]
    r = v.rank
    threads = config.CUDA_THREADS_PER_BLOCK
    width = SummaryLayout(d, dv).wide
    pieces = list(chunks(n, chunk))

    def key_rows(rows):
        return (_features(v, v.K1t[kb, rows]), _columns(v.ones[rows], v.V1[kb, rows], v.K1[kb, rows], width),
                _features(v, v.K2t[kb, rows]), _columns(v.ones[rows], v.V2[kb, rows], v.K2[kb, rows], width))

    P2 = _device.device_full((len(pieces), width, r), 0.0)
    P3 = _device.device_full((len(pieces), width, r), 0.0)
    partial = _device.device_empty((width, threads), np.float64)
    for index, rows in enumerate(pieces):
        if index > 0:
            P2[index].copy_to_device(P2[index - 1])
            P3[index].copy_to_device(P3[index - 1])
        U2T, c2, U3T, c3 = key_rows(rows)
        kernels._causal_forward_scan[width, threads](U2T, U2T, c2, U3T, c3, P2[index], P3[index], partial, c2,
                                                     False)
    suffix_shapes = ((dv, r), (dv, r), (dv * d, r), (dv * d, r), (d, r), (d, r))
    suffix_sums = [_device.device_full(shape, 0.0) for shape in suffix_shapes]
    partial = _device.device_empty((1 + 3 * (dv * d + d) + 2 * dv, threads), np.float64)
    for index in range(len(pieces) - 1, -1, -1):
        rows = pieces[index]
        U2T, c2, U3T, c3 = key_rows(rows)
        kernels._causal_backward_scan[1, threads](
            _features(v, v.Qt[b, rows], v.coefficients[b, rows]), U2T, c2, U3T, c3,
            v.Q[b, rows], dO[b, rows], delta[b, rows], v.V1[kb, rows], v.V2[kb, rows], scale,
            P2[index], P3[index], *suffix_sums, partial, dQ[b, rows], *(g[rows] for g in (dK1, dK2, dV1, dV2)),
        )


def _window_forward(v: _Balanced, b: int, kb: int, chunk: int, widths: tuple[int, int], O, lse, bad) -> None:
    """Windowed forward of batch entry ``b`` (keys of entry ``kb``; the CPU's
    ``causal.window_forward``): window states P2, P3 (1 + dv, r), one block per column; each chunk
    also reads the key rows before it that a restart sums (up to max w − 1 of them)."""
    w1, w2 = widths
    n, d = v.Q.shape[1:]
    threads = config.CUDA_THREADS_PER_BLOCK
    k = SummaryLayout(d, v.V1.shape[2]).narrow
    P2, P3 = _device.device_full((k, v.rank), 0.0), _device.device_full((k, v.rank), 0.0)
    partial = _device.device_empty((k, threads), np.float64)
    carry1, carry2 = w1 >= n, w2 >= n
    reach = max(w for w in widths if w < n)  # key rows before the chunk a restart reads
    for rows in chunks(n, chunk):
        c0 = rows.start
        keys = slice(max(0, c0 + 1 - reach), rows.stop)
        out = _device.device_empty((rows.stop - rows.start, k), np.float64)
        kernels._window_forward_scan[k, threads](
            c0, w1, w2, carry1, carry2, keys.start,
            _features(v, v.Qt[b, rows], v.coefficients[b, rows]),
            _features(v, v.K1t[kb, keys]), _columns(v.ones[keys], v.V1[kb, keys], v.K1[kb, keys], k),
            _features(v, v.K2t[kb, keys]), _columns(v.ones[keys], v.V2[kb, keys], v.K2[kb, keys], k),
            P2, P3, partial, out,
        )
        _device.launch(kernels._normalise, out.shape[0], out, O[b, rows], lse[b, rows], bad)


def _window_backward(v: _Balanced, b: int, kb: int, dO, delta, scale: float, chunk: int, widths: tuple[int, int],
                     dQ, dK1, dK2, dV1, dV2) -> None:
    """Windowed gradient of batch entry ``b`` with key/value entry ``kb`` (the CPU's
    ``causal.window_backward``): per chunk [c0, e], one block walks the query rows c0 .. top
    (:func:`~.causal.window_top`) with a lead scan and two trailing scans. Writes dQ[b] and the
    key/value gradients (n, ·) given. Extra memory: six wide r-states, the accumulators and the
    features of up to chunk + 2·max(w) rows."""
    w1, w2 = widths
    n, d = v.Q.shape[1:]
    dv = v.V1.shape[2]
    r = v.rank
    threads = config.CUDA_THREADS_PER_BLOCK
    width = SummaryLayout(d, dv).wide
    states = _device.device_full((6, width, r), 0.0)
    suffix_shapes = ((dv, r), (dv, r), (dv * d, r), (dv * d, r), (d, r), (d, r))
    sums = [_device.device_full(shape, 0.0) for shape in suffix_shapes]
    partial = _device.device_empty((3 + 3 * (dv * d + d) + 2 * dv, threads), np.float64)
    for rows in chunks(n, chunk):
        c0, e = rows.start, rows.stop - 1
        top = window_top(e, n, widths)
        queries = slice(c0, top + 1)
        keys = slice(max(0, c0 + 1 - max(w1, w2)), top + 1)
        kernels._window_backward_chunk[1, threads](
            c0, e, top, w1, w2, keys.start,
            _features(v, v.Qt[b, queries], v.coefficients[b, queries]),
            _features(v, v.K1t[kb, keys]), _columns(v.ones[keys], v.V1[kb, keys], v.K1[kb, keys], width),
            _features(v, v.K2t[kb, keys]), _columns(v.ones[keys], v.V2[kb, keys], v.K2[kb, keys], width),
            v.Q[b], dO[b], delta[b], v.V1[kb], v.V2[kb], scale, states, *sums, partial, dQ[b], dK1, dK2, dV1, dV2,
        )
