"""CUDA kernels of the polynomial surrogate other than the matrix product (see :mod:`._cuda_gemm`).

Feature maps (one thread per row, walking the multi-index table as :mod:`.features` does),
the input statistics of the plan, the elementwise and per-row kernels around the low-rank
products, and the two scans of the causal surrogate (:mod:`.causal` on the CPU).

Every reduction is deterministic: per-thread partial sums in a scratch array, then a
fixed-shape tree within the block. The one atomic operation on floats is the maximum of
:func:`_max_row_fourth_powers`, whose result does not depend on the order; the count of bad
normalisers is an integer atomic. Grid-stride loops cover any size with
``config.CUDA_THREADS_PER_BLOCK`` threads per block.

Imported only once a CUDA request has passed :func:`tattn_numba._cuda.require`.
"""

from __future__ import annotations

import math

from .._cuda import require

cuda = require()


@cuda.jit(device=True)
def _split_index(task, inner):
    """``(task // inner, task % inner)`` for a flat index ``task >= 0`` over an (outer, inner) grid."""
    outer = task // inner
    return outer, task - outer * inner


@cuda.jit
def _query_row_sums(Q, k12, weighted_l1, squares):
    """Per query row: ``weighted_l1[b, i] = Σ_l |Q[b, i, l]|·k12[b, l]`` and
    ``squares[b, i] = Σ_l Q[b, i, l]²``. Q (B, n, d) float64, k12 (B, d); O(B·n·d)."""
    B, n, d = Q.shape
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for task in range(start, B * n, stride):
        b, i = _split_index(task, n)
        l1 = 0.0
        l2 = 0.0
        for l in range(d):
            x = Q[b, i, l]
            l1 += abs(x) * k12[b, l]
            l2 += x * x
        weighted_l1[b, i] = l1
        squares[b, i] = l2


@cuda.jit
def _max_row_fourth_powers(K, out):
    """``out[b] = max(out[b], max_j Σ_l K[b, j, l]⁴)`` by atomic maxima (order-free). K (B, m, d)
    float64, ``out`` (B,) initialised to 0; O(B·m·d)."""
    B, m, d = K.shape
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for task in range(start, B * m, stride):
        b, j = _split_index(task, m)
        total = 0.0
        for l in range(d):
            square = K[b, j, l] * K[b, j, l]
            total += square * square
        cuda.atomic.max(out, b, total)


@cuda.jit
def _scale_rows_and_columns(X, row_factor, column_factor, out):
    """``out[b, i, l] = X[b, i, l]·row_factor[b, i]·column_factor[b, l]``: the balanced variables
    q̃ = s·Q·κ1·κ2/R and K/κ. X, out (B, rows, d); O(B·rows·d)."""
    B, rows, d = X.shape
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for task in range(start, B * rows * d, stride):
        flat_row, l = _split_index(task, d)
        b, i = _split_index(flat_row, rows)
        out[b, i, l] = X[b, i, l] * row_factor[b, i] * column_factor[b, l]


@cuda.jit
def _monomials(X, coefficients, parent, var, degree, multinomial, weighted, outT):
    """Feature map transposed, ``outT[c, j] = Π_l X[j, l]^{α_l}`` for column c ↔ α.

    One thread per row j walks the table: column c is its parent column times X[j, var[c]].
    With ``weighted`` (the query side, U1) column c is then multiplied by
    ``multinomial[c]·coefficients[j, degree[c]]``. X (rows, d), coefficients (rows, g + 1),
    table arrays (r,), outT (r, rows); O(rows·r). Consecutive threads write consecutive entries
    of a feature row.
    """
    rows = X.shape[0]
    r = parent.shape[0]
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for j in range(start, rows, stride):
        outT[0, j] = 1.0
        for c in range(1, r):
            outT[c, j] = outT[parent[c], j] * X[j, var[c]]
        if weighted:
            for c in range(r):
                outT[c, j] *= multinomial[c] * coefficients[j, degree[c]]


@cuda.jit
def _fill_columns(c, X, Y, out):
    """Row j of ``out`` = [c_j | X_j | c_j·Y_j | X_j ⊙ Y_j] (first ``out.shape[1]`` columns): the
    right-hand sides of the summaries (keys: c = 1, X = V, Y = K; queries: c = δ, X = dO,
    Y = Q). X (rows, a), Y (rows, b), out (rows, width); O(rows·width)."""
    rows, width = out.shape
    a = X.shape[1]
    b = Y.shape[1]
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for task in range(start, rows * width, stride):
        j, k = _split_index(task, width)
        if k == 0:
            out[j, k] = c[j]
        elif k <= a:
            out[j, k] = X[j, k - 1]
        elif k <= a + b:
            out[j, k] = c[j] * Y[j, k - 1 - a]
        else:
            m = (k - 1 - a - b) // b
            out[j, k] = X[j, m] * Y[j, k - 1 - a - b - m * b]


@cuda.jit
def _hadamard_columns(left, right, columns, out):
    """``out[α, k] = left[α, columns[k]]·right[α, columns[k]]``: products of two summaries' chosen
    columns (r, width) into out (r, len(columns)); O(r·len(columns))."""
    r, width = out.shape
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for task in range(start, r * width, stride):
        a, k = _split_index(task, width)
        out[a, k] = left[a, columns[k]] * right[a, columns[k]]


@cuda.jit(device=True)
def _row_normaliser(T, j, bad):
    """The normaliser ``w = T[j, 0]`` of row j; 1.0 instead, counted into ``bad[0]`` (an integer
    atomic), unless 0 < w < ∞ (NaN included)."""
    w = T[j, 0]
    if not (w > 0.0 and w < math.inf):
        cuda.atomic.add(bad, 0, 1)
        w = 1.0
    return w


@cuda.jit
def _normalise(T, O, lse, bad):
    """From T = [w | w·Õ] (rows, 1 + dv): ``O = T[:, 1:] / w``, ``lse = log w``; counts rows whose
    w is not positive and finite into ``bad[0]`` (int64, integer atomics). O(rows·dv)."""
    rows, dv = O.shape
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for j in range(start, rows, stride):
        w = _row_normaliser(T, j, bad)
        for m in range(dv):
            O[j, m] = T[j, 1 + m] / w
        lse[j] = math.log(w)


@cuda.jit
def _query_gradient_rows(T, dO, delta, scale, w, dQ, bad):
    """dQ of a chunk of query rows from T = U1·[s2∘s3 | A1∘A2 | B1∘B2] (rows, 1 + dv·d + d):

        w_i = T[i, 0],   dQ[i, l] = s·(Σ_m dO[i, m]·T[i, 1 + m·d + l] − δ_i·T[i, 1 + dv·d + l]) / w_i

    (the CPU's einsum("cm,cml->cl") term with Un = U1 / w). Writes ``w`` (rows,) and counts bad
    normalisers into ``bad[0]``. O(rows·d·dv).
    """
    rows, d = dQ.shape
    dv = dO.shape[1]
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, rows, stride):
        wi = _row_normaliser(T, i, bad)
        w[i] = wi
        for l in range(d):
            total = 0.0
            for m in range(dv):
                total += dO[i, m] * T[i, 1 + m * d + l]
            dQ[i, l] = scale * (total - delta[i] * T[i, 1 + dv * d + l]) / wi


@cuda.jit
def _divide_columns(UT, w):
    """``UT[α, j] /= w[j]``: Un^T = U1^T / w for a chunk; UT (r, rows), O(r·rows)."""
    r, rows = UT.shape
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for task in range(start, r * rows, stride):
        a, j = _split_index(task, rows)
        UT[a, j] /= w[j]


@cuda.jit
def _key_gradient_rows(T, V, scale, dV, dK):
    """dV and dK of a chunk of key rows from T = U·[S∘Gq | C1∘A | C2∘B] (rows, dv + dv·d + d):

        dV[j, m] = T[j, m],   dK[j, l] = s·(Σ_m V[j, m]·T[j, dv + m·d + l] − T[j, dv + dv·d + l])

    O(rows·d·dv).
    """
    rows, d = dK.shape
    dv = V.shape[1]
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for j in range(start, rows, stride):
        for m in range(dv):
            dV[j, m] = T[j, m]
        for l in range(d):
            total = 0.0
            for m in range(dv):
                total += V[j, m] * T[j, dv + m * d + l]
            dK[j, l] = scale * (total - T[j, dv + dv * d + l])


@cuda.jit(device=True)
def _block_tree_sum(partial, first, count):
    """Sum the block's partials ``partial[q, :blockDim.x]`` into ``partial[q, 0]`` for
    q in [first, first + count), by a fixed tree (deterministic; blockDim.x a power of two).
    Every thread of the block must call it; it ends with a barrier."""
    t = cuda.threadIdx.x
    half = cuda.blockDim.x // 2
    cuda.syncthreads()
    while half > 0:
        if t < half:
            for q in range(first, first + count):
                partial[q, t] += partial[q, t + half]
        cuda.syncthreads()
        half //= 2


@cuda.jit
def _causal_forward_scan(U1T, U2T, c2, U3T, c3, P2, P3, partial, out, with_output):
    """Causal forward over a chunk of rows; block k owns summary column k.

    For each row i in order: ``P2[k, :] += c2[i, k]·U2[i, :]`` and ``P3[k, :] += c3[i, k]·U3[i, :]``
    (the prefix states), then, with ``with_output``,
    ``out[i, k] = Σ_α U1[i, α]·P2[k, α]·P3[k, α]``. Threads of a block stride over the r features
    (each owns its own entries of the state, so the update is race-free) and meet in a tree sum.

    U1T, U2T, U3T (r, rows) (U1T unused without output); c2, c3 (rows, k); P2, P3 (k, r),
    updated in place; partial (k, blockDim.x) scratch; out (rows, k). Time O(rows·r·k / threads
    + rows·log(threads)) per block; the rows are sequential.
    """
    k = cuda.blockIdx.x
    t = cuda.threadIdx.x
    threads = cuda.blockDim.x
    r = P2.shape[1]
    for i in range(U2T.shape[1]):
        factor2 = c2[i, k]
        factor3 = c3[i, k]
        total = 0.0
        for a in range(t, r, threads):
            P2[k, a] += factor2 * U2T[a, i]
            P3[k, a] += factor3 * U3T[a, i]
            if with_output:
                total += U1T[a, i] * P2[k, a] * P3[k, a]
        if with_output:
            partial[k, t] = total
            _block_tree_sum(partial, k, 1)
            if t == 0:
                out[i, k] = partial[k, 0]
            cuda.syncthreads()


@cuda.jit(device=True)
def _partial_layout(d, dv, first):
    """Offsets of the backward scans: the K and V⊙K blocks of a state ([1 | V | K | V⊙K]), the
    width dv·d + d of a gradient's terms, and where the dQ, value and key terms start in
    ``partial`` (after ``first`` rows of normalisers)."""
    wide = dv * d + d
    return 1 + dv, 1 + dv + d, wide, first, first + wide, first + wide + 2 * dv


@cuda.jit(device=True)
def _query_terms(un, a, i, L2, L3, Q, dO, delta, sign, do1, do2, GS2, GS3, Y1, Y2, Z1, Z2):
    """Feature α of query row ``i``'s terms (``un`` = U1[i, α] / w_i, states L2, L3), ``sign``
    times, into the accumulators of key set 1 (GS3, Y1, Z1; ``do1``) and key set 2 (GS2, Y2, Z2;
    ``do2``): the CPU's ``causal._query_row``, entry by entry in its order (prefix or window states)."""
    d = Q.shape[1]
    dv = dO.shape[1]
    S = 1
    K = 1 + dv
    A = 1 + dv + d
    for m in range(dv):
        g = sign * dO[i, m]
        if do2:
            GS2[m, a] += g * un * L2[S + m, a]
        if do1:
            GS3[m, a] += g * un * L3[S + m, a]
        for l in range(d):
            gq = g * Q[i, l]
            if do1:
                Y1[m * d + l, a] += gq * un * L3[A + m * d + l, a]
            if do2:
                Y2[m * d + l, a] += gq * un * L2[A + m * d + l, a]
    for l in range(d):
        dq = sign * delta[i] * Q[i, l]
        if do1:
            Z1[l, a] += dq * un * L3[K + l, a]
        if do2:
            Z2[l, a] += dq * un * L2[K + l, a]


@cuda.jit(device=True)
def _key_partials(partial, t, a, u2, u3, GS2, GS3, Y1, Y2, Z1, Z2, value_terms, key_terms, wide):
    """Feature α's share of key row j's dV1, dV2, dK1, dK2 sums into ``partial[:, t]`` (``u2``,
    ``u3`` its features U2[j, α], U3[j, α])."""
    dv = GS2.shape[0]
    d = Z1.shape[0]
    for m in range(dv):
        partial[value_terms + m, t] += u2 * GS3[m, a]
        partial[value_terms + dv + m, t] += u3 * GS2[m, a]
        for l in range(d):
            partial[key_terms + m * d + l, t] += u2 * Y1[m * d + l, a]
            partial[key_terms + wide + m * d + l, t] += u3 * Y2[m * d + l, a]
    for l in range(d):
        partial[key_terms + dv * d + l, t] += u2 * Z1[l, a]
        partial[key_terms + wide + dv * d + l, t] += u3 * Z2[l, a]


@cuda.jit(device=True)
def _write_row_gradients(partial, i, t, threads, dO, delta, V1, V2, scale, query_terms, value_terms, key_terms,
                         wide, dQ, dK1, dK2, dV1, dV2):
    """Query row i's dQ and key row i's dV1, dV2, dK1, dK2 from the block's tree-summed
    ``partial[:, 0]`` (the dQ terms at ``query_terms``, the value terms at ``value_terms``, the
    two key sides ``wide`` apart from ``key_terms``); the block's threads share the 3d + 2dv outputs."""
    d = dQ.shape[1]
    dv = dO.shape[1]
    for o in range(t, 3 * d + 2 * dv, threads):
        if o < d:
            total = 0.0
            for m in range(dv):
                total += dO[i, m] * partial[query_terms + m * d + o, 0]
            dQ[i, o] = scale * (total - delta[i] * partial[query_terms + dv * d + o, 0])
        elif o < d + 2 * dv:
            m = o - d
            if m < dv:
                dV1[i, m] = partial[value_terms + m, 0]
            else:
                dV2[i, m - dv] = partial[value_terms + m, 0]
        else:
            side = (o - d - 2 * dv) // d
            l = o - d - 2 * dv - side * d
            first = key_terms + side * wide
            total = 0.0
            for m in range(dv):
                total += (V1[i, m] if side == 0 else V2[i, m]) * partial[first + m * d + l, 0]
            value = scale * (total - partial[first + dv * d + l, 0])
            if side == 0:
                dK1[i, l] = value
            else:
                dK2[i, l] = value


@cuda.jit
def _causal_backward_scan(U1T, U2T, c2, U3T, c3, Q, dO, delta, V1, V2, scale, P2, P3,
                          GS2, GS3, Y1, Y2, Z1, Z2, partial, dQ, dK1, dK2, dV1, dV2):
    """Causal backward over a chunk of rows in reverse order, one block (the CPU's
    ``causal._backward_scan``, row for row).

    On entry P2, P3 (width × r, width = 1 + dv + d + dv·d, layout [1 | V | K | V⊙K]) hold the
    prefix through the chunk's last row; they are downdated row by row. The suffix sums over
    query rows after the current one, GS2, GS3 (dv × r), Y1, Y2 (dv·d × r), Z1, Z2 (d × r), are
    carried in place across chunks. For row i (threads stride over the features α):

    1. w_i = Σ_α U1[i, α]·P2[0, α]·P3[0, α] (tree sum), un = U1[i] / w_i;
    2. per α: the partial sums of dQ's terms Σ_α un·P2·P3 over the A and K columns, the suffix
       updates with query row i, then the partial sums of dV, dK's terms Σ_α U·(suffix), and the
       downdate of P2, P3 by key row i;
    3. one tree sum of all 3·(dv·d + d) + 2·dv partials; threads split the outputs
       dQ[i, :], dV1[i, :], dV2[i, :], dK1[i, :], dK2[i, :].

    ``partial`` is (1 + 3·(dv·d + d) + 2·dv, blockDim.x) scratch. Time O(rows·r·d·dv / threads
    + rows·d·dv·log(threads)).
    """
    t = cuda.threadIdx.x
    threads = cuda.blockDim.x
    d = Q.shape[1]
    dv = dO.shape[1]
    r = P2.shape[1]
    width = P2.shape[0]
    K, A, wide, query_terms, value_terms, key_terms = _partial_layout(d, dv, 1)
    count = partial.shape[0] - 1
    for i in range(U2T.shape[1] - 1, -1, -1):
        total = 0.0
        for a in range(t, r, threads):
            total += U1T[a, i] * P2[0, a] * P3[0, a]
        partial[0, t] = total
        _block_tree_sum(partial, 0, 1)
        w = partial[0, 0]
        for q in range(1, partial.shape[0]):
            partial[q, t] = 0.0
        for a in range(t, r, threads):
            un = U1T[a, i] / w
            u2 = U2T[a, i]
            u3 = U3T[a, i]
            for l in range(d):
                for m in range(dv):
                    partial[query_terms + m * d + l, t] += un * P2[A + m * d + l, a] * P3[A + m * d + l, a]
                partial[query_terms + dv * d + l, t] += un * P2[K + l, a] * P3[K + l, a]
            _query_terms(un, a, i, P2, P3, Q, dO, delta, 1.0, True, True, GS2, GS3, Y1, Y2, Z1, Z2)
            _key_partials(partial, t, a, u2, u3, GS2, GS3, Y1, Y2, Z1, Z2, value_terms, key_terms, wide)
            for k in range(width):
                P2[k, a] += -c2[i, k] * u2
                P3[k, a] += -c3[i, k] * u3
        _block_tree_sum(partial, 1, count)
        _write_row_gradients(partial, i, t, threads, dO, delta, V1, V2, scale, query_terms, value_terms, key_terms,
                             wide, dQ, dK1, dK2, dV1, dV2)
        cuda.syncthreads()


# --------------------------------------------------------------------------------------------
# Causal sliding windows (w1, w2): the CPU's windowed scans (:mod:`.causal`, its section comment on
# causal sliding windows), with the same running window states, the same exact restarts every w rows
# and, per state entry, the same sequence of added and subtracted terms. Each thread owns the
# features α of its stride in every state and accumulator, so per entry the GPU performs the
# CPU's operations in the CPU's order; only the sums over α (normalisers, outputs, gradients)
# are tree sums instead of left-to-right loops, which changes no term count of the rounding
# certificate (an r-term sum either way).


@cuda.jit(device=True)
def _window_set_visit(P, k, a, UT, c, i, w, steps, base, up):
    """Entry (k, α) of one key set's window state at row ``i`` (absolute), ``steps`` rows after
    the scan's first row (the CPU's ``causal._set_visit`` for one entry): every w steps it
    restarts exactly from zero over the window rows in increasing order; otherwise it moves by
    one row from row i − 1 (``up``) or i + 1, adding the entering key row, then subtracting the
    leaving one. ``UT`` (r, rows) and ``c`` (rows, width) start at row ``base``."""
    if steps % w == 0:
        P[k, a] = 0.0
        for j in range(max(0, i + 1 - w), i + 1):
            P[k, a] += c[j - base, k] * UT[a, j - base]
    elif up:
        P[k, a] += c[i - base, k] * UT[a, i - base]
        if i - w >= 0:
            P[k, a] += -c[i - w - base, k] * UT[a, i - w - base]
    else:
        P[k, a] += -c[i + 1 - base, k] * UT[a, i + 1 - base]
        if i + 1 - w >= 0:
            P[k, a] += c[i + 1 - w - base, k] * UT[a, i + 1 - w - base]


@cuda.jit(device=True)
def _window_visit_down(P2, P3, a, U2T, c2, U3T, c3, i, origin, w1, w2, base):
    """Feature α of both wide window states at row ``i`` of a reverse scan that started at row
    ``origin`` >= i (the CPU's ``causal._visit_down``, every summary column)."""
    for k in range(P2.shape[0]):
        _window_set_visit(P2, k, a, U2T, c2, i, w1, origin - i, base, False)
        _window_set_visit(P3, k, a, U3T, c3, i, w2, origin - i, base, False)


@cuda.jit
def _window_forward_scan(c0, w1, w2, carry1, carry2, base, U1T, U2T, c2, U3T, c3, P2, P3, partial, out):
    """Windowed forward over the chunk of rows c0 .. c0 + rows − 1; block k owns summary column k
    (the CPU's ``causal._window_forward_scan``, and :func:`_causal_forward_scan`'s layout).

    For each row i in order, per feature α (threads stride over them): the window states
    ``P2[k, α]``, ``P3[k, α]`` move to row i (:func:`_window_set_visit`, restarting every w rows
    from the chunk's first row; a key set with ``carry`` keeps its prefix from the previous
    chunk), then ``out[i − c0, k] = Σ_α U1[i, α]·P2[k, α]·P3[k, α]`` by a tree sum.

    U1T (r, rows); U2T, U3T (r, key rows) and c2, c3 (key rows, k) start at key row ``base``;
    P2, P3 (k, r), carried across chunks; partial (k, blockDim.x) scratch; out (rows, k).
    Time O(rows·r·k·(1 + max w / w) / threads + rows·log(threads)) per block.
    """
    k = cuda.blockIdx.x
    t = cuda.threadIdx.x
    threads = cuda.blockDim.x
    r = P2.shape[1]
    for s in range(U1T.shape[1]):
        i = c0 + s
        steps1 = s + (1 if carry1 and c0 > 0 else 0)
        steps2 = s + (1 if carry2 and c0 > 0 else 0)
        total = 0.0
        for a in range(t, r, threads):
            _window_set_visit(P2, k, a, U2T, c2, i, w1, steps1, base, True)
            _window_set_visit(P3, k, a, U3T, c3, i, w2, steps2, base, True)
            total += U1T[a, s] * P2[k, a] * P3[k, a]
        partial[k, t] = total
        _block_tree_sum(partial, k, 1)
        if t == 0:
            out[s, k] = partial[k, 0]
        cuda.syncthreads()


@cuda.jit
def _window_backward_chunk(c0, e, top, w1, w2, base, U1T, U2T, c2, U3T, c3, Q, dO, delta, V1, V2, scale,
                           states, GS2, GS3, Y1, Y2, Z1, Z2, partial, dQ, dK1, dK2, dV1, dV2):
    """Windowed gradients of the rows c0 .. e of one chunk, one block (the CPU's
    ``causal._window_backward_chunk``, row for row; see its section comment).

    The lead scan walks the query rows from ``top`` down to c0 with its window states; at a row
    j <= e two trailing scans (key set 1, key set 2), each with its own window states, recompute
    query row j + w1 (j + w2), which leaves key row j's query interval, and subtract its terms;
    then key row j's gradients are read from the accumulators. Per step, threads stride over the
    features α:

    1. the three states move to their rows (:func:`_window_visit_down`) and the normalisers
       w = Σ_α U1·P2[0]·P3[0] of the lead and the active trailing rows meet in one tree sum;
    2. per α, in the CPU's order: the lead row's dQ partials and terms (+), trailing row 1's
       terms (−, key set 1 only), trailing row 2's terms (−, key set 2 only), then key row j's
       dV, dK partials;
    3. one tree sum of the dQ, dV, dK partials; threads split the outputs (rows j = i <= e only).

    U1T (r, top − c0 + 1) holds the query rows c0 .. top; U2T, U3T (r, ·) and c2, c3 (·, width)
    the key rows base .. top; Q, dO, delta, V1, V2 and the gradients are whole (n rows).
    ``states`` (6, width, r): lead P2, P3, trail-1 P2, P3, trail-2 P2, P3. The accumulators GS2,
    GS3 (dv × r), Y1, Y2 (dv·d × r), Z1, Z2 (d × r) are zeroed here (every chunk restarts them).
    ``partial`` is (3 + 3·(dv·d + d) + 2·dv, blockDim.x) scratch. Time O((top − c0 + 1)·r·d·dv
    / threads + (e − c0 + 1)·d·dv·log(threads)), plus O(width·max w) per state restart.
    """
    t = cuda.threadIdx.x
    threads = cuda.blockDim.x
    n = Q.shape[0]
    d = Q.shape[1]
    dv = dO.shape[1]
    r = U1T.shape[0]
    K, A, wide, query_terms, value_terms, key_terms = _partial_layout(d, dv, 3)
    count = partial.shape[0] - query_terms
    L2 = states[0]
    L3 = states[1]
    A2 = states[2]
    A3 = states[3]
    B2 = states[4]
    B3 = states[5]
    for a in range(t, r, threads):
        for m in range(dv):
            GS2[m, a] = 0.0
            GS3[m, a] = 0.0
        for q in range(dv * d):
            Y1[q, a] = 0.0
            Y2[q, a] = 0.0
        for l in range(d):
            Z1[l, a] = 0.0
            Z2[l, a] = 0.0
    o1 = -1  # the first rows of the trailing scans (-1: not started); the same in every thread
    o2 = -1
    for i in range(top, c0 - 1, -1):
        do1 = i <= e + w1 - 1
        do2 = i <= e + w2 - 1
        key = i <= e
        row1 = i + w1
        row2 = i + w2
        trail1 = key and i < e and row1 <= n - 1
        trail2 = key and i < e and row2 <= n - 1
        if trail1 and o1 < 0:
            o1 = row1
        if trail2 and o2 < 0:
            o2 = row2
        # 1. states and normalisers
        total = 0.0
        total1 = 0.0
        total2 = 0.0
        for a in range(t, r, threads):
            _window_visit_down(L2, L3, a, U2T, c2, U3T, c3, i, top, w1, w2, base)
            total += U1T[a, i - c0] * L2[0, a] * L3[0, a]
            if trail1:
                _window_visit_down(A2, A3, a, U2T, c2, U3T, c3, row1, o1, w1, w2, base)
                total1 += U1T[a, row1 - c0] * A2[0, a] * A3[0, a]
            if trail2:
                _window_visit_down(B2, B3, a, U2T, c2, U3T, c3, row2, o2, w1, w2, base)
                total2 += U1T[a, row2 - c0] * B2[0, a] * B3[0, a]
        partial[0, t] = total
        partial[1, t] = total1
        partial[2, t] = total2
        _block_tree_sum(partial, 0, 3)
        w = partial[0, 0]
        wa = partial[1, 0]
        wb = partial[2, 0]
        if key:
            for q in range(query_terms, partial.shape[0]):
                partial[q, t] = 0.0
        # 2. accumulators and partial sums, per feature
        for a in range(t, r, threads):
            un = U1T[a, i - c0] / w
            if key:
                for l in range(d):
                    for m in range(dv):
                        partial[query_terms + m * d + l, t] += un * L2[A + m * d + l, a] * L3[A + m * d + l, a]
                    partial[query_terms + dv * d + l, t] += un * L2[K + l, a] * L3[K + l, a]
            _query_terms(un, a, i, L2, L3, Q, dO, delta, 1.0, do1, do2, GS2, GS3, Y1, Y2, Z1, Z2)
            if trail1:
                _query_terms(U1T[a, row1 - c0] / wa, a, row1, A2, A3, Q, dO, delta, -1.0, True, False,
                                    GS2, GS3, Y1, Y2, Z1, Z2)
            if trail2:
                _query_terms(U1T[a, row2 - c0] / wb, a, row2, B2, B3, Q, dO, delta, -1.0, False, True,
                                    GS2, GS3, Y1, Y2, Z1, Z2)
            if key:
                u2 = U2T[a, i - base]
                u3 = U3T[a, i - base]
                _key_partials(partial, t, a, u2, u3, GS2, GS3, Y1, Y2, Z1, Z2, value_terms, key_terms, wide)
        if not key:
            cuda.syncthreads()  # partial[0:3, 0] is read above; the next row writes it
            continue
        # 3. the outputs of query row i and key row i
        _block_tree_sum(partial, query_terms, count)
        _write_row_gradients(partial, i, t, threads, dO, delta, V1, V2, scale, query_terms, value_terms, key_terms,
                             wide, dQ, dK1, dK2, dV1, dV2)
        cuda.syncthreads()
