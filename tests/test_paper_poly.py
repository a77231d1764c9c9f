"""Tests of ``method="poly"`` in tattn_numba.paper: the surrogate through the reduced tensor attention.

The reduction (paper.py module notes): the paper's layer with general X (d×d²) and Y (d²×d) is
tensor attention with Q' = A1 X, K1'[j,(b,c)] = A2[j,b], K2'[j,(b,c)] = A3[j,c], V1'[j,(b,c)] =
A4[j,b], V2'[j,(b,c)] = A5[j,c] (pair (b,c) = b·d + c) at scale 1/d; output O'Y, c = O'Y − E,
dLoss/dY = O'^T c, dLoss/dX = A1^T dQ' for upstream dO' = c Y^T. It is checked first with the
exact attention against the dense Kronecker reference, then the surrogate against its certified
bounds (:func:`paper.poly_certificate`).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import tattn_numba as ta
from tattn_numba import paper


def dense_terms(A1, A2, A3, A4, A5, E, X, Y):
    """Loss, output, dLoss/dX, dLoss/dY by the literal formulas of SPEC §3 (Kronecker products formed)."""
    A1, A2, A3, A4, A5, E, X, Y = (np.asarray(a, dtype=np.float64) for a in (A1, A2, A3, A4, A5, E, X, Y))
    d = A1.shape[1]
    K23, K45 = np.kron(A2, A3), np.kron(A4, A5)
    L = A1 @ X @ K23.T / d
    f = np.exp(L - L.max(axis=1, keepdims=True))
    f /= f.sum(axis=1, keepdims=True)
    h = K45 @ Y
    out = f @ h
    c = out - E
    p = f * (c @ h.T) - np.sum(c * out, axis=1)[:, None] * f
    return 0.5 * float(np.sum(c * c)), out, A1.T @ p @ K23 / d, K45.T @ f.T @ c


def reduced_operands(A1, A2, A3, A4, A5, X):
    """Q', K1', K2', V1', V2' built entry by entry from the definition (independent of paper.py)."""
    n, d = A1.shape
    K1, K2, V1, V2 = (np.empty((n, d * d)) for _ in range(4))
    for b in range(d):
        for c in range(d):
            K1[:, b * d + c] = A2[:, b]
            K2[:, b * d + c] = A3[:, c]
            V1[:, b * d + c] = A4[:, b]
            V2[:, b * d + c] = A5[:, c]
    return A1 @ X, K1, K2, V1, V2


def problem(seed, n, d, B, dtype=np.float64):
    """Entries uniform in [−B, B] (A's, E, X, Y)."""
    rng = np.random.default_rng(seed)
    A = [rng.uniform(-B, B, (n, d)).astype(dtype) for _ in range(5)]
    E = rng.uniform(-B, B, (n, d)).astype(dtype)
    X = rng.uniform(-B, B, (d, d * d)).astype(dtype)
    Y = rng.uniform(-B, B, (d * d, d)).astype(dtype)
    return A, E, X, Y


def weights(seed, d, B, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return [rng.uniform(-B, B, (d, d)).astype(dtype) for _ in range(5)]


def within(err, bound, scale):
    """err <= bound up to float64 rounding of the final sums (not part of the certificate)."""
    return np.all(np.abs(err) <= bound + 1e-13 * scale)


# --------------------------------------------------------------------------------------------
# the reduction, checked with the exact attention
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n, d, B, seed", [(5, 2, 1.0, 0), (9, 3, 1.0, 1), (13, 2, 2.0, 2), (7, 3, 0.5, 3)])
def test_reduction_with_exact_attention_equals_paper(n, d, B, seed):
    A, E, X, Y = problem(seed, n, d, B)
    Qp, K1, K2, V1, V2 = reduced_operands(*A, X)
    for mine, theirs in zip((Qp, K1, K2, V1, V2), paper._reduced_attention(A, X)):
        np.testing.assert_array_equal(mine, theirs)
    Op, state = ta.attention_forward(Qp, K1, K2, V1, V2, scale=1.0 / d)
    c = Op @ Y - E
    dX = A[0].T @ ta.attention_backward(state, c @ Y.T).dQ
    dY = Op.T @ c
    L = 0.5 * float(np.sum(c * c))
    Ld, outd, dXd, dYd = dense_terms(*A, E, X, Y)
    np.testing.assert_allclose(L, paper.loss(*A, E, X, Y), rtol=1e-12)
    np.testing.assert_allclose(L, Ld, rtol=1e-12)
    np.testing.assert_allclose(Op @ Y, paper.output(*A, X, Y), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(Op @ Y, outd, rtol=1e-12, atol=1e-14)
    scale_x = np.abs(dXd).max()
    np.testing.assert_allclose(dX, paper.grad_X(*A, E, X, Y), rtol=1e-10, atol=1e-12 * scale_x)
    np.testing.assert_allclose(dX, dXd, rtol=1e-10, atol=1e-12 * scale_x)
    np.testing.assert_allclose(dY, paper.grad_Y(*A, E, X, Y), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dY, dYd, rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------------------------
# the surrogate within its certified bounds
# --------------------------------------------------------------------------------------------

CASES = [  # n, d, B, degree, family, seed
    (5, 2, 1.0, 3, "chebyshev", 10),
    (12, 2, 1.0, 6, "chebyshev", 11),
    (20, 2, 1.0, 10, "taylor", 12),
    (16, 2, 0.5, 4, "taylor", 13),
    (8, 3, 0.5, 3, "chebyshev", 14),
    (20, 3, 1.0, 4, "chebyshev", 15),
    (11, 3, 1.0, 5, "taylor", 16),
]


@pytest.mark.parametrize("n, d, B, degree, family, seed", CASES)
def test_poly_within_certified_bounds(n, d, B, degree, family, seed):
    A, E, X, Y = problem(seed, n, d, B)
    kw = dict(method="poly", degree=degree, family=family)
    cert = paper.poly_certificate(*A, E, X, Y, degree=degree, family=family)
    assert cert.plan.degree == degree and cert.plan.family == family
    assert cert.plan.rank == math.comb(d * d + degree, degree)  # r = C(d² + g, g)
    # the public functions return the certificate's values
    assert paper.loss(*A, E, X, Y, **kw) == pytest.approx(cert.loss, rel=1e-14, abs=1e-300)
    np.testing.assert_allclose(paper.output(*A, X, Y, **kw), cert.output, rtol=1e-14, atol=0)
    np.testing.assert_allclose(paper.grad_X(*A, E, X, Y, **kw), cert.grad_X, rtol=1e-13, atol=1e-16)
    np.testing.assert_allclose(paper.grad_Y(*A, E, X, Y, **kw), cert.grad_Y, rtol=1e-14, atol=0)
    # ... and they are within the certified bounds of the exact ones
    L, out, dX, dY = (paper.loss(*A, E, X, Y), paper.output(*A, X, Y), paper.grad_X(*A, E, X, Y),
                      paper.grad_Y(*A, E, X, Y))
    assert within(cert.loss - L, cert.loss_bound, L)
    assert within(cert.output - out, cert.output_bound, np.abs(out).max())
    assert within(cert.grad_X - dX, cert.grad_X_bound, np.abs(dX).max())
    assert within(cert.grad_Y - dY, cert.grad_Y_bound, np.abs(dY).max())
    # the bounds are not vacuous here: the surrogate is actually close
    assert abs(cert.loss - L) < 1e-2 * max(L, 1e-300) or cert.loss_bound < 1e-2 * L
    # the plan's bound on the underlying attention output
    Qp, K1, K2, V1, V2 = reduced_operands(*A, X)
    Oe = ta.attention(Qp, K1, K2, V1, V2, scale=1.0 / d)
    Op = ta.attention(Qp, K1, K2, V1, V2, scale=1.0 / d, method="poly", degree=degree, family=family)
    assert within(Op - Oe, cert.plan.output_bound, np.abs(Oe).max())


@pytest.mark.parametrize("n, d, B, degree, family, seed", CASES[1:6:2])
def test_poly_weight_grads_within_certified_bounds(n, d, B, degree, family, seed):
    A, E, _, _ = problem(seed, n, d, B)
    W = weights(seed + 100, d, B)
    X, Y = paper.build_X(*W[:3]), paper.build_Y(*W[3:])
    exact = paper.weight_grads(*A, E, *W)
    poly = paper.weight_grads(*A, E, *W, method="poly", degree=degree, family=family)
    cert = paper.poly_certificate(*A, E, X, Y, degree=degree, family=family)
    bounds = paper.poly_weight_grad_bounds(cert, *W)
    for name, p, e, b in zip(paper.WeightGrads._fields, poly, exact, bounds):
        assert p.shape == e.shape == b.shape == (d, d), name
        assert within(p - e, b, np.abs(e).max()), name
    assert np.abs(poly.dW_Q - exact.dW_Q).max() <= 1e-2 * np.abs(exact.dW_Q).max() + 1e-12


@pytest.mark.parametrize("d, B, degrees", [(2, 1.0, (2, 4, 6, 8, 12)), (3, 0.5, (1, 2, 4, 6))])
@pytest.mark.parametrize("family", ["chebyshev", "taylor"])
def test_poly_converges_with_degree(d, B, degrees, family):
    A, E, X, Y = problem(7 + d, 10, d, B)
    L, dX, dY = paper.loss(*A, E, X, Y), paper.grad_X(*A, E, X, Y), paper.grad_Y(*A, E, X, Y)
    errors, bounds = [], []
    for g in degrees:
        cert = paper.poly_certificate(*A, E, X, Y, degree=g, family=family)
        errors.append(max(abs(cert.loss - L) / L, np.abs(cert.grad_X - dX).max() / np.abs(dX).max(),
                          np.abs(cert.grad_Y - dY).max() / np.abs(dY).max()))
        bounds.append((cert.loss_bound, cert.grad_X_bound.max(), cert.grad_Y_bound.max()))
    # the certified bounds shrink strictly with the degree (these degrees stay above the float64 floor)
    for lo, hi in zip(bounds[1:], bounds[:-1]):
        assert all(a < b for a, b in zip(lo, hi))
    assert errors[0] > 1e3 * errors[-1]
    assert errors[-1] <= 1e-10  # relative error of loss, grad_X, grad_Y at the highest degree
    assert bounds[-1][0] <= 1e-10 * L and bounds[-1][2] <= 1e-8 * np.abs(dY).max()


@pytest.mark.parametrize("tol", [1e-2, 1e-5, 1e-9])
@pytest.mark.parametrize("n, d, B, seed", [(14, 2, 1.0, 20), (9, 3, 0.5, 21)])
def test_tol_bounds_the_layer_output(tol, n, d, B, seed):
    A, E, X, Y = problem(seed, n, d, B)
    cert = paper.poly_certificate(*A, E, X, Y, tol=tol)
    assert cert.output_bound.max() <= tol
    out = paper.output(*A, X, Y)
    poly_out = paper.output(*A, X, Y, method="poly", tol=tol)
    np.testing.assert_array_equal(poly_out, cert.output)
    assert np.abs(poly_out - out).max() <= tol
    assert paper.loss(*A, E, X, Y, method="poly", tol=tol) == cert.loss
    assert within(cert.loss - paper.loss(*A, E, X, Y), cert.loss_bound, cert.loss)
    # the smallest certified degree was chosen: one less would not certify tol
    if cert.plan.degree > 0:
        lower = paper.poly_certificate(*A, E, X, Y, degree=cert.plan.degree - 1)
        assert lower.output_bound.max() > tol * 0.999
    # a tighter tol never lowers the degree
    tighter = paper.poly_certificate(*A, E, X, Y, tol=tol / 100)
    assert tighter.plan.degree >= cert.plan.degree


def test_tol_with_zero_Y():
    A, E, X, Y = problem(30, 6, 2, 1.0)
    Y = np.zeros_like(Y)
    cert = paper.poly_certificate(*A, E, X, Y, tol=1e-6)
    assert cert.output_bound.max() == 0.0
    np.testing.assert_array_equal(cert.output, 0.0)


# --------------------------------------------------------------------------------------------
# options, errors, dtypes
# --------------------------------------------------------------------------------------------


def _args(fn, A, E, X, Y, W):
    if fn is paper.output:
        return (*A, X, Y)
    if fn is paper.weight_grads:
        return (*A, E, *W)
    return (*A, E, X, Y)


FUNCTIONS = [paper.loss, paper.grad_X, paper.grad_Y, paper.output, paper.weight_grads]


@pytest.mark.parametrize("fn", FUNCTIONS, ids=lambda f: f.__name__)
def test_bad_options(fn):
    A, E, X, Y = problem(40, 5, 2, 1.0)
    args = _args(fn, A, E, X, Y, weights(41, 2, 1.0))
    for name, value in [("tol", 1e-3), ("degree", 3), ("family", "taylor"), ("memory_budget", 2**20)]:
        with pytest.raises(TypeError, match=name):
            fn(*args, **{name: value})
        with pytest.raises(TypeError, match=name):
            fn(*args, method="exact", **{name: value})
    with pytest.raises(ValueError, match="tol.*degree"):
        fn(*args, method="poly")
    with pytest.raises(ValueError, match="both tol and degree"):
        fn(*args, method="poly", tol=1e-3, degree=3)
    with pytest.raises(ValueError, match="family"):
        fn(*args, method="poly", degree=3, family="legendre")
    with pytest.raises(TypeError, match="family"):
        fn(*args, method="poly", degree=3, family=3)
    with pytest.raises(ValueError, match="tol"):
        fn(*args, method="poly", tol=-1.0)
    with pytest.raises(ValueError, match="tol"):
        fn(*args, method="poly", tol=float("nan"))
    with pytest.raises(TypeError, match="tol"):
        fn(*args, method="poly", tol="small")
    with pytest.raises(TypeError, match="degree"):
        fn(*args, method="poly", degree=2.5)
    with pytest.raises(TypeError, match="degree"):
        fn(*args, method="poly", degree=True)
    with pytest.raises(ValueError, match="degree"):
        fn(*args, method="poly", degree=-1)
    with pytest.raises(ValueError, match="method"):
        fn(*args, method="polynomial", degree=3)
    fn(*args, method="poly", degree=np.int64(3), family="taylor")  # numpy integers are fine


def test_certificate_bad_options_and_refusals():
    A, E, X, Y = problem(42, 6, 3, 1.0)
    with pytest.raises(ValueError, match="tol.*degree"):
        paper.poly_certificate(*A, E, X, Y)
    with pytest.raises(ValueError, match="family"):
        paper.poly_certificate(*A, E, X, Y, degree=2, family="bernstein")
    with pytest.raises(ValueError, match="X"):
        paper.poly_certificate(*A, E, X[:, :4], Y, degree=2)
    # the surrogate's memory-budget refusal: r = C(9 + 12, 12) = 293930 columns
    with pytest.raises(ValueError, match="memory"):
        paper.loss(*A, E, X, Y, method="poly", degree=12, memory_budget=2**20)
    with pytest.raises(ValueError, match="memory_budget"):
        paper.loss(*A, E, X, Y, method="poly", degree=2, memory_budget=-5)
    # a degree too low to keep the weights positive is refused, not silently wrong
    Ab, Eb, Xb, Yb = problem(43, 6, 2, 2.0)
    with pytest.raises(ValueError, match="degree"):
        paper.grad_X(*Ab, Eb, Xb, Yb, method="poly", degree=1)
    with pytest.raises(TypeError, match="PolyCertificate"):
        paper.poly_weight_grad_bounds(None, *weights(44, 3, 1.0))
    cert = paper.poly_certificate(*A, E, X, Y, degree=4)
    with pytest.raises(ValueError, match="W_V1"):
        paper.poly_weight_grad_bounds(cert, *weights(45, 3, 1.0)[:3], np.eye(2), np.eye(3))


def test_float32_in_float32_out():
    A, E, X, Y = problem(50, 9, 2, 1.0, dtype=np.float32)
    W = weights(51, 2, 1.0, dtype=np.float32)
    kw = dict(method="poly", degree=8)
    loss32 = paper.loss(*A, E, X, Y, **kw)
    assert isinstance(loss32, float)
    results = {
        "output": paper.output(*A, X, Y, **kw),
        "grad_X": paper.grad_X(*A, E, X, Y, **kw),
        "grad_Y": paper.grad_Y(*A, E, X, Y, **kw),
    }
    for name, r in results.items():
        assert r.dtype == np.float32, name
    for g in paper.weight_grads(*A, E, *W, **kw):
        assert g.dtype == np.float32
    # the float32 results are the float64 computation on the same (float32-representable) inputs
    A64, E64, X64, Y64 = ([a.astype(np.float64) for a in A], E.astype(np.float64), X.astype(np.float64),
                          Y.astype(np.float64))
    cert = paper.poly_certificate(*A64, E64, X64, Y64, degree=8)
    assert loss32 == pytest.approx(cert.loss, rel=1e-12)
    np.testing.assert_allclose(results["output"], cert.output, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(results["grad_X"], cert.grad_X, rtol=1e-6, atol=1e-7 * np.abs(cert.grad_X).max())
    np.testing.assert_allclose(results["grad_Y"], cert.grad_Y, rtol=1e-6, atol=1e-7)
    cert32 = paper.poly_certificate(*A, E, X, Y, degree=8)
    assert cert32.output.dtype == np.float64 and cert32.loss == cert.loss
