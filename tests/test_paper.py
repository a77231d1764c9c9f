"""Tests of tattn_numba.paper: the training problem of Liang–Shi–Song–Zhou (2024), SPEC §3.

Ground truth is the plain dense reference below: it forms the Kronecker products A2⊗A3 and A4⊗A5
(n²×d²) and the n×n² softmax explicitly with ``np.kron``, which is fine at the tiny sizes used here
and is exactly what the implementation must never do.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import tracemalloc

import numpy as np
import pytest
import tensorly as tl
from hypothesis import given, settings
from hypothesis import strategies as st
from tensorly.tenalg import kronecker, multi_mode_dot

import tattn_numba as ta
from tattn_numba import config, paper
from tattn_numba.paper import _common, _exact

# --------------------------------------------------------------------------------------------
# dense reference (float64, Kronecker products formed explicitly)
# --------------------------------------------------------------------------------------------


def dense_terms(A1, A2, A3, A4, A5, E, X, Y):
    """Return loss, output f h, dLoss/dX, dLoss/dY by the literal formulas of SPEC §3."""
    A1, A2, A3, A4, A5, E, X, Y = (np.asarray(a, dtype=np.float64) for a in (A1, A2, A3, A4, A5, E, X, Y))
    d = A1.shape[1]
    K23 = np.kron(A2, A3)  # (n², d²), row pair(j1, j2) = j1·n + j2
    K45 = np.kron(A4, A5)
    L = A1 @ X @ K23.T / d  # (n, n²)
    A = np.exp(L - L.max(axis=1, keepdims=True))
    f = A / A.sum(axis=1, keepdims=True)
    h = K45 @ Y
    out = f @ h
    c = out - E
    q = c @ h.T
    r = np.sum(c * out, axis=1)
    p = f * q - r[:, None] * f
    dX = A1.T @ p @ K23 / d
    dY = K45.T @ f.T @ c
    return 0.5 * float(np.sum(c * c)), out, dX, dY


def dense_dX_magnitude(A1, A2, A3, A4, A5, E, X, Y):
    """(1/d) |A1|^T (f ∘ (|q| + |r|)) |A2 ⊗ A3|: the size of the terms summed into dLoss/dX.

    p = f ∘ (q − r) cancels when the softmax is (nearly) one-hot or n = 1, so the rounding error
    of any implementation (the reference's included) is a few eps times this, not times |dX|.
    """
    d = A1.shape[1]
    K23 = np.kron(A2, A3)
    L = A1 @ X @ K23.T / d
    f = np.exp(L - L.max(axis=1, keepdims=True))
    f /= f.sum(axis=1, keepdims=True)
    h = np.kron(A4, A5) @ Y
    c = f @ h - E
    terms = f * (np.abs(c @ h.T) + np.abs(np.sum(c * (f @ h), axis=1))[:, None])
    return np.abs(A1).T @ terms @ np.abs(K23) / d


def random_problem(rng, n, d, scale=1.0, dtype=np.float64):
    A = [(scale * rng.standard_normal((n, d))).astype(dtype) for _ in range(5)]
    E = rng.standard_normal((n, d)).astype(dtype)
    X = (scale * rng.standard_normal((d, d * d))).astype(dtype)
    Y = rng.standard_normal((d * d, d)).astype(dtype)
    return A, E, X, Y


def random_weights(rng, d, scale=1.0, dtype=np.float64):
    return [(scale * rng.standard_normal((d, d))).astype(dtype) for _ in range(5)]


def central_fd(fun, x, eps=1e-6):
    """Central finite differences of the scalar ``fun`` at ``x`` (float64)."""
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += eps
        xm[idx] -= eps
        g[idx] = (fun(xp) - fun(xm)) / (2 * eps)
    return g


SHAPES = [(1, 1), (1, 3), (3, 1), (3, 2), (4, 3), (5, 2)]


# --------------------------------------------------------------------------------------------
# build_X, build_Y, logits
# --------------------------------------------------------------------------------------------


def test_paper_is_reachable_from_package():
    assert ta.paper is paper
    for name in ("build_X", "build_Y", "loss", "grad_X", "grad_Y", "weight_grads", "output", "WeightGrads"):
        assert name in paper.__all__


@pytest.mark.parametrize("d", [1, 2, 3])
def test_build_X_matches_loops(rng, d):
    WQ, WK1, WK2 = (rng.standard_normal((d, d)) for _ in range(3))
    X = paper.build_X(WQ, WK1, WK2)
    assert X.shape == (d, d * d) and X.dtype == np.float64
    expected = np.zeros((d, d * d))
    for a in range(d):
        for b in range(d):
            for c in range(d):
                expected[a, b * d + c] = sum(WQ[a, l] * WK1[b, l] * WK2[c, l] for l in range(d))
    np.testing.assert_allclose(X, expected, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("d", [1, 2, 3])
def test_build_Y_matches_loops(rng, d):
    WV1, WV2 = (rng.standard_normal((d, d)) for _ in range(2))
    Y = paper.build_Y(WV1, WV2)
    assert Y.shape == (d * d, d)
    expected = np.zeros((d * d, d))
    for b in range(d):
        for c in range(d):
            for m in range(d):
                expected[b * d + c, m] = WV1[b, m] * WV2[c, m]
    np.testing.assert_array_equal(Y, expected)


@pytest.mark.parametrize("n,d", [(3, 2), (4, 3)])
def test_factorized_logits_equal_tensor_attention_logits(rng, n, d):
    """A1 X (A2⊗A3)^T / d = s·⟨Q_i, K1_j1 ∘ K2_j2⟩ with Q = A1 W_Q, K1 = A2 W_K1, K2 = A3 W_K2, s = 1/d."""
    A1, A2, A3 = (rng.standard_normal((n, d)) for _ in range(3))
    WQ, WK1, WK2 = (rng.standard_normal((d, d)) for _ in range(3))
    X = paper.build_X(WQ, WK1, WK2)
    L = A1 @ X @ np.kron(A2, A3).T / d
    Q, K1, K2 = A1 @ WQ, A2 @ WK1, A3 @ WK2
    for i in range(n):
        for j1 in range(n):
            for j2 in range(n):
                expected = np.dot(Q[i], K1[j1] * K2[j2]) / d
                np.testing.assert_allclose(L[i, j1 * n + j2], expected, rtol=1e-12, atol=1e-13)
    # the chunked form: the mode product T ×_1 A2 ×_2 A3 of T = (A1 X) reshaped (n, d, d)
    T = (A1 @ X).reshape(n, d, d)
    with tl.backend_context("numpy"):
        M = multi_mode_dot(T, [A2, A3], modes=[1, 2])
    np.testing.assert_allclose(M.reshape(n, n * n) / d, L, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(_exact.sandwich(A2, T, A3), M, rtol=1e-12, atol=1e-13)
    # and the value side: (A4 ⊗ A5) Y = V1 ⊘ V2 (SPEC §4, I2)
    A4, A5 = (rng.standard_normal((n, d)) for _ in range(2))
    WV1, WV2 = (rng.standard_normal((d, d)) for _ in range(2))
    with tl.backend_context("numpy"):
        K45 = kronecker([A4, A5])
    np.testing.assert_allclose(K45, np.kron(A4, A5))
    np.testing.assert_allclose(K45 @ paper.build_Y(WV1, WV2), _common.khatri_rao_product(A4 @ WV1, A5 @ WV2),
                               atol=1e-12)


# --------------------------------------------------------------------------------------------
# loss, grad_X, grad_Y against the dense reference and finite differences
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,d", SHAPES)
def test_against_dense_reference(rng, n, d):
    A, E, X, Y = random_problem(rng, n, d)
    ref_loss, ref_out, ref_dX, ref_dY = dense_terms(*A, E, X, Y)
    value = paper.loss(*A, E, X, Y)
    assert type(value) is float
    np.testing.assert_allclose(value, ref_loss, rtol=1e-12)
    np.testing.assert_allclose(paper.output(*A, X, Y), ref_out, rtol=1e-12, atol=1e-13)
    gX = paper.grad_X(*A, E, X, Y)
    gY = paper.grad_Y(*A, E, X, Y)
    assert gX.shape == (d, d * d) and gY.shape == (d * d, d)
    assert gX.dtype == gY.dtype == np.float64
    np.testing.assert_allclose(gX, ref_dX, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(gY, ref_dY, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("n,d", [(3, 2), (4, 3), (2, 1)])
def test_grad_X_finite_differences(rng, n, d):
    A, E, X, Y = random_problem(rng, n, d)
    fd = central_fd(lambda x: paper.loss(*A, E, x, Y), X)
    np.testing.assert_allclose(paper.grad_X(*A, E, X, Y), fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("n,d", [(3, 2), (4, 3), (2, 1)])
def test_grad_Y_finite_differences(rng, n, d):
    A, E, X, Y = random_problem(rng, n, d)
    fd = central_fd(lambda y: paper.loss(*A, E, X, y), Y)
    np.testing.assert_allclose(paper.grad_Y(*A, E, X, Y), fd, rtol=1e-6, atol=1e-8)


def test_single_row_has_zero_grad_X(rng):
    """n = 1: one key pair, f = 1, so p = q − r = 0 (up to rounding) and the loss does not depend on X."""
    A, E, X, Y = random_problem(rng, 1, 3)
    bound = dense_dX_magnitude(*A, E, X, Y).max()
    np.testing.assert_allclose(paper.grad_X(*A, E, X, Y), 0.0, atol=1e-13 * bound)
    _, out, _, ref_dY = dense_terms(*A, E, X, Y)
    np.testing.assert_allclose(paper.grad_Y(*A, E, X, Y), ref_dY, rtol=1e-12)


def test_all_equal_logits(rng):
    """X = 0: uniform softmax 1/n² in every row; the output is the mean of h."""
    n, d = 4, 2
    A, E, _, Y = random_problem(rng, n, d)
    X = np.zeros((d, d * d))
    h = np.kron(A[3], A[4]) @ Y
    np.testing.assert_allclose(paper.output(*A, X, Y), np.tile(h.mean(axis=0), (n, 1)), rtol=1e-12)
    _, _, ref_dX, ref_dY = dense_terms(*A, E, X, Y)
    np.testing.assert_allclose(paper.grad_X(*A, E, X, Y), ref_dX, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(paper.grad_Y(*A, E, X, Y), ref_dY, rtol=1e-11, atol=1e-13)


def test_huge_logits_are_stable(rng):
    """Logits of order 10³ (exp would overflow without subtracting the row max).

    The softmax is then nearly one-hot and p = f ∘ (q − r) cancels almost completely (the true
    dLoss/dX is ~1e-7 while its terms are O(1)), so both the reference and the implementation
    carry rounding errors of order eps·Σ|terms|; the tolerance is stated relative to that sum.
    """
    n, d = 4, 2
    A, E, X, Y = random_problem(rng, n, d, scale=12.0)
    K23 = np.kron(A[1], A[2])
    L = A[0] @ X @ K23.T / d
    assert np.abs(L).max() > 800  # exp(L) alone would overflow
    ref_loss, ref_out, ref_dX, ref_dY = dense_terms(*A, E, X, Y)
    np.testing.assert_allclose(paper.loss(*A, E, X, Y), ref_loss, rtol=1e-10)
    np.testing.assert_allclose(paper.output(*A, X, Y), ref_out, rtol=1e-10, atol=1e-12)
    gX = paper.grad_X(*A, E, X, Y)
    assert np.isfinite(gX).all()
    bound = dense_dX_magnitude(*A, E, X, Y)
    np.testing.assert_array_less(np.abs(gX - ref_dX), 1e-12 * bound.max() + 1e-300)
    np.testing.assert_allclose(paper.grad_Y(*A, E, X, Y), ref_dY, rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------------------------
# weight gradients
# --------------------------------------------------------------------------------------------


def _loss_of_weights(A, E, W):
    return paper.loss(*A, E, paper.build_X(*W[:3]), paper.build_Y(*W[3:]))


@pytest.mark.parametrize("n,d", [(3, 2), (4, 3)])
def test_weight_grads_finite_differences(rng, n, d):
    A, E, _, _ = random_problem(rng, n, d)
    W = random_weights(rng, d)
    grads = paper.weight_grads(*A, E, *W)
    assert isinstance(grads, paper.WeightGrads)
    for k, (name, g) in enumerate(zip(grads._fields, grads)):
        assert g.shape == (d, d) and g.dtype == np.float64

        def fun(w, k=k):
            W2 = list(W)
            W2[k] = w
            return _loss_of_weights(A, E, W2)

        np.testing.assert_allclose(g, central_fd(fun, W[k]), rtol=1e-6, atol=1e-8, err_msg=name)


def test_weight_grads_match_chain_through_X_and_Y(rng):
    """dW_Q = G (W_K1 ⊘ W_K2) etc. with G = grad_X, against explicit einsums."""
    n, d = 4, 3
    A, E, _, _ = random_problem(rng, n, d)
    WQ, WK1, WK2, WV1, WV2 = W = random_weights(rng, d)
    X, Y = paper.build_X(WQ, WK1, WK2), paper.build_Y(WV1, WV2)
    G = paper.grad_X(*A, E, X, Y).reshape(d, d, d)
    H = paper.grad_Y(*A, E, X, Y).reshape(d, d, d)
    grads = paper.weight_grads(*A, E, *W)
    expected = [
        np.einsum("abc,bl,cl->al", G, WK1, WK2),
        np.einsum("abc,al,cl->bl", G, WQ, WK2),
        np.einsum("abc,al,bl->cl", G, WQ, WK1),
        np.einsum("bcm,cm->bm", H, WV2),
        np.einsum("bcm,bm->cm", H, WV1),
    ]
    for g, e in zip(grads, expected):
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-14)


def _require_exact_cpu():
    if importlib.util.find_spec("tattn_numba.exact.cpu") is None:
        pytest.skip("tattn_numba.exact.cpu (the layer kernels) is not available yet")
    try:
        importlib.import_module("tattn_numba.exact.cpu")
    except ImportError as exc:  # pragma: no cover - only while the kernels are being written
        pytest.skip(f"tattn_numba.exact.cpu is not importable yet: {exc}")


@pytest.mark.parametrize("n,d", [(3, 2), (5, 3)])
def test_output_equals_public_attention(rng, n, d, warm_kernels):
    _require_exact_cpu()
    A, _, _, _ = random_problem(rng, n, d)
    WQ, WK1, WK2, WV1, WV2 = random_weights(rng, d)
    X, Y = paper.build_X(WQ, WK1, WK2), paper.build_Y(WV1, WV2)
    O = ta.attention(A[0] @ WQ, A[1] @ WK1, A[2] @ WK2, A[3] @ WV1, A[4] @ WV2, scale=1.0 / d)
    np.testing.assert_allclose(paper.output(*A, X, Y), O, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("n,d", [(3, 2), (5, 3)])
def test_weight_grads_match_layer_gradients(rng, n, d, warm_kernels):
    """SPEC §3: the layer gradients of §2 with dO = c give dW_Q = A1^T dQ, …, dW_V2 = A5^T dV2."""
    _require_exact_cpu()
    A, E, _, _ = random_problem(rng, n, d)
    W = random_weights(rng, d)
    Q, K1, K2, V1, V2 = (a @ w for a, w in zip(A, W))
    c = ta.attention(Q, K1, K2, V1, V2, scale=1.0 / d) - E
    layer = ta.attention_grad(Q, K1, K2, V1, V2, c, scale=1.0 / d)
    grads = paper.weight_grads(*A, E, *W)
    for a, g_layer, g, name in zip(A, layer, grads, grads._fields):
        np.testing.assert_allclose(g, a.T @ g_layer, rtol=1e-9, atol=1e-12, err_msg=name)


# --------------------------------------------------------------------------------------------
# chunking and memory
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def chunk_rows(rows):
    """Run the exact method with ``rows`` query rows per chunk (the setting ``config.PAPER_CHUNK_ROWS``)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(config, "PAPER_CHUNK_ROWS", rows)
        yield


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 100])
def test_chunking_invariance(rng, chunk):
    """Results agree (to rounding of the summation order) whatever the number of rows per chunk."""
    n, d = 7, 3
    A, E, X, Y = random_problem(rng, n, d)
    W = random_weights(rng, d)
    with chunk_rows(n):
        assert _exact.chunk_size(n, d) == n
        full = dict(loss=paper.loss(*A, E, X, Y), out=paper.output(*A, X, Y), gX=paper.grad_X(*A, E, X, Y),
                    gY=paper.grad_Y(*A, E, X, Y), gW=paper.weight_grads(*A, E, *W))
    with chunk_rows(chunk):
        assert _exact.chunk_size(n, d) == min(chunk, n)
        np.testing.assert_allclose(paper.loss(*A, E, X, Y), full["loss"], rtol=1e-14)
        np.testing.assert_allclose(paper.output(*A, X, Y), full["out"], rtol=1e-14, atol=1e-15)
        np.testing.assert_allclose(paper.grad_X(*A, E, X, Y), full["gX"], rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(paper.grad_Y(*A, E, X, Y), full["gY"], rtol=1e-13, atol=1e-15)
        for g, e in zip(paper.weight_grads(*A, E, *W), full["gW"]):
            np.testing.assert_allclose(g, e, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "2"])
def test_chunk_rows_setting_is_validated(rng, bad):
    A, E, X, Y = random_problem(rng, 3, 2)
    with chunk_rows(bad), pytest.raises(ValueError, match="_CHUNK_ROWS"):
        paper.loss(*A, E, X, Y)


def test_chunk_rows_is_not_a_keyword(rng):
    """The chunk size is a module setting (``config.PAPER_CHUNK_ROWS``), not an argument of the public API."""
    A, E, X, Y = random_problem(rng, 3, 2)
    W = random_weights(rng, 2)
    for call in (lambda: paper.loss(*A, E, X, Y, _chunk_rows=1), lambda: paper.output(*A, X, Y, _chunk_rows=1),
                 lambda: paper.grad_X(*A, E, X, Y, _chunk_rows=1), lambda: paper.grad_Y(*A, E, X, Y, _chunk_rows=1),
                 lambda: paper.weight_grads(*A, E, *W, _chunk_rows=1)):
        with pytest.raises(TypeError, match="_chunk_rows"):
            call()


def test_chunk_size_follows_module_setting(rng, monkeypatch):
    n, d = 6, 2
    assert _exact.chunk_size(n, d) == n  # tiny problem: one chunk
    monkeypatch.setattr(config, "PAPER_CHUNK_BYTES", 1)
    assert _exact.chunk_size(n, d) == 1  # at least one row per chunk
    A, E, X, Y = random_problem(rng, n, d)
    _, _, ref_dX, ref_dY = dense_terms(*A, E, X, Y)
    np.testing.assert_allclose(paper.grad_X(*A, E, X, Y), ref_dX, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(paper.grad_Y(*A, E, X, Y), ref_dY, rtol=1e-11, atol=1e-13)


def test_no_n_by_n_squared_allocation(rng):
    """At n = 200 an n×n² float64 matrix is 64 MB; the chunked computation must stay far below."""
    n, d = 200, 4
    A, E, X, Y = random_problem(rng, n, d, scale=0.5)
    W = random_weights(rng, d, scale=0.5)
    paper.grad_X(*A, E, X, Y)  # warm up (imports, BLAS buffers) outside the trace
    limit = n**3 * 8 // 8  # 8 MB, an eighth of one n×n² matrix
    tracemalloc.start()  # positive control: tracemalloc does see NumPy allocations
    try:
        np.zeros((n, n * n)).sum()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak >= n**3 * 8
    for name, call in [
        ("loss", lambda: paper.loss(*A, E, X, Y)),
        ("grad_X", lambda: paper.grad_X(*A, E, X, Y)),
        ("grad_Y", lambda: paper.grad_Y(*A, E, X, Y)),
        ("weight_grads", lambda: paper.weight_grads(*A, E, *W)),
    ]:
        tracemalloc.start()
        try:
            call()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < limit, f"{name} peaked at {peak / 1e6:.1f} MB (limit {limit / 1e6:.1f} MB)"


def test_row_above_memory_budget_raises(rng, monkeypatch):
    A, E, X, Y = random_problem(rng, 10, 2)
    monkeypatch.setattr(config, "MEMORY_BUDGET_BYTES", 1000)
    with pytest.raises(ValueError, match="memory budget"):
        paper.grad_X(*A, E, X, Y)
    with pytest.raises(ValueError, match="memory budget"):
        paper.loss(*A, E, X, Y)


# --------------------------------------------------------------------------------------------
# dtypes
# --------------------------------------------------------------------------------------------


def test_float32_inputs_give_float32_outputs(rng):
    """float32 in → float32 out, computed in float64 internally.

    Against float64 on the *same* (float32-representable) inputs the only error is the final
    rounding to float32: rtol 1e-6 (≈ 8·eps32). Against the original float64 data the float32
    rounding of the inputs (≈ 6e-8 relative) is propagated through products of up to five inputs
    and a softmax with O(1) logits, so a relative error of 1e-5 (≈ 170·eps32) is allowed there,
    relative to the largest entry.
    """
    n, d = 5, 3
    A, E, X, Y = random_problem(rng, n, d)
    A32 = [a.astype(np.float32) for a in A]
    E32, X32, Y32 = (x.astype(np.float32) for x in (E, X, Y))
    ref_same = dense_terms(*A32, E32, X32, Y32)
    ref_orig = dense_terms(*A, E, X, Y)
    value = paper.loss(*A32, E32, X32, Y32)
    assert type(value) is float
    np.testing.assert_allclose(value, ref_same[0], rtol=1e-12)
    np.testing.assert_allclose(value, ref_orig[0], rtol=1e-5)
    for got, k in [(paper.output(*A32, X32, Y32), 1), (paper.grad_X(*A32, E32, X32, Y32), 2),
                   (paper.grad_Y(*A32, E32, X32, Y32), 3)]:
        assert got.dtype == np.float32
        scale = np.abs(ref_orig[k]).max()
        np.testing.assert_allclose(got, ref_same[k], rtol=1e-6, atol=1e-6 * scale)
        np.testing.assert_allclose(got, ref_orig[k], rtol=1e-5, atol=1e-5 * scale)
    W32 = [w.astype(np.float32) for w in random_weights(rng, d)]
    assert paper.build_X(*W32[:3]).dtype == np.float32
    assert paper.build_Y(*W32[3:]).dtype == np.float32
    grads32 = paper.weight_grads(*A32, E32, *W32)
    A64 = [a.astype(np.float64) for a in A32]
    grads64 = paper.weight_grads(*A64, E32.astype(np.float64), *(w.astype(np.float64) for w in W32))
    for g32, g64 in zip(grads32, grads64):
        assert g32.dtype == np.float32
        np.testing.assert_allclose(g32, g64, rtol=1e-6, atol=1e-6 * np.abs(g64).max())


def test_float32_inputs_whose_products_overflow_float32(rng):
    """Entries ~1e20 in A1 and X: A1 X ~ 1e40 overflows float32 but not the float64 internals."""
    n, d = 4, 2
    A, E, X, Y = random_problem(rng, n, d)
    A[0] = A[0] * 1e20
    X = X * 1e20
    A32 = [a.astype(np.float32) for a in A]
    E32, X32, Y32 = (x.astype(np.float32) for x in (E, X, Y))
    with np.errstate(over="ignore"):
        assert not np.isfinite(A32[0] @ X32).all()  # the naive float32 product overflows
    ref_loss, ref_out, _, ref_dY = dense_terms(*A32, E32, X32, Y32)
    np.testing.assert_allclose(paper.loss(*A32, E32, X32, Y32), ref_loss, rtol=1e-6)
    np.testing.assert_allclose(paper.output(*A32, X32, Y32), ref_out, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(paper.grad_Y(*A32, E32, X32, Y32), ref_dY, rtol=1e-6, atol=1e-6)
    assert np.isfinite(paper.grad_X(*A32, E32, X32, Y32)).all()


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------


def _good(n=3, d=2, dtype=np.float64):
    rng = np.random.default_rng(0)
    A, E, X, Y = random_problem(rng, n, d, dtype=dtype)
    return dict(A1=A[0], A2=A[1], A3=A[2], A4=A[3], A5=A[4], E=E, X=X, Y=Y)


def _call(fn, kw, **extra):
    args = [kw[k] for k in ("A1", "A2", "A3", "A4", "A5", "E", "X", "Y")]
    return fn(*args, **extra)


@pytest.mark.parametrize("fn", [paper.loss, paper.grad_X, paper.grad_Y])
@pytest.mark.parametrize(
    "name,bad,exc",
    [
        ("A1", np.ones(3), ValueError),
        ("A3", np.ones((4, 2)), ValueError),
        ("A5", np.ones((3, 3)), ValueError),
        ("E", np.ones((3, 3)), ValueError),
        ("X", np.ones((2, 2)), ValueError),
        ("X", np.ones((3, 4)), ValueError),
        ("Y", np.ones((2, 4)), ValueError),
        ("A2", np.ones((3, 2), dtype=np.int64), TypeError),
        ("A4", np.ones((3, 2), dtype=np.float32), TypeError),
        ("E", np.full((3, 2), np.nan), ValueError),
        ("Y", np.full((4, 2), np.inf), ValueError),
        ("A1", np.ones((0, 2)), ValueError),
        ("X", "not an array", TypeError),
    ],
)
def test_bad_input_names_argument(fn, name, bad, exc):
    kw = _good()
    kw[name] = bad
    with pytest.raises(exc, match=name):
        _call(fn, kw)


@pytest.mark.parametrize("fn", [paper.loss, paper.grad_X, paper.grad_Y])
def test_unknown_method(fn):
    kw = _good()
    with pytest.raises(ValueError, match="method"):
        _call(fn, kw, method="surrogate")
    with pytest.raises(TypeError, match="method"):
        _call(fn, kw, method=None)
    _call(fn, kw, method="exact")


def test_bad_weights():
    kw = _good()
    A = [kw[k] for k in ("A1", "A2", "A3", "A4", "A5")]
    W = [np.eye(2) for _ in range(5)]
    bad = list(W)
    bad[1] = np.ones((2, 3))
    with pytest.raises(ValueError, match="W_K1"):
        paper.weight_grads(*A, kw["E"], *bad)
    bad = list(W)
    bad[4] = np.eye(3)
    with pytest.raises(ValueError, match="W_V2"):
        paper.weight_grads(*A, kw["E"], *bad)
    bad = list(W)
    bad[2] = np.eye(2, dtype=np.float32)
    with pytest.raises(TypeError, match="W_K2"):
        paper.weight_grads(*A, kw["E"], *bad)
    with pytest.raises(ValueError, match="method"):
        paper.weight_grads(*A, kw["E"], *W, method="poly")
    with pytest.raises(ValueError, match="W_K1"):
        paper.build_X(np.eye(2), np.eye(3), np.eye(2))
    with pytest.raises(TypeError, match="W_V2"):
        paper.build_Y(np.eye(2), np.eye(2, dtype=np.float32))
    with pytest.raises(ValueError, match="W_Q"):
        paper.build_X(np.ones((2, 3)), np.eye(2), np.eye(2))


# --------------------------------------------------------------------------------------------
# property test
# --------------------------------------------------------------------------------------------


@settings(deadline=None, max_examples=15)
@given(
    n=st.integers(1, 5),
    d=st.integers(1, 3),
    scale=st.floats(0.05, 3.0),
    chunk=st.one_of(st.none(), st.integers(1, 5)),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_matches_dense(n, d, scale, chunk, seed):
    rng = np.random.default_rng(seed)
    A, E, X, Y = random_problem(rng, n, d, scale=scale)
    ref_loss, ref_out, ref_dX, ref_dY = dense_terms(*A, E, X, Y)
    with chunk_rows(chunk):
        got_loss = paper.loss(*A, E, X, Y)
        gX = paper.grad_X(*A, E, X, Y)
        gY = paper.grad_Y(*A, E, X, Y)
    assert got_loss >= 0.0
    np.testing.assert_allclose(got_loss, ref_loss, rtol=1e-10, atol=1e-13)
    # rounding relative to the magnitude of the cancelling terms (see dense_dX_magnitude)
    np.testing.assert_allclose(gX, ref_dX, rtol=1e-9, atol=1e-12 * dense_dX_magnitude(*A, E, X, Y).max())
    np.testing.assert_allclose(gY, ref_dY, rtol=1e-9, atol=1e-11 * max(1.0, np.abs(ref_dY).max()))
