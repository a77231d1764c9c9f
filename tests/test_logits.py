"""Logit forms (tattn_numba.logits): the determinant lift against a plain dense reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tattn_numba as ta
from tattn_numba.logits import LOGIT_FORMS, check_logits, lift, lifted_width, pull_back


# ----------------------------------------------------------------------------------------------
# Dense float64 reference, written plainly (explicit 3x3 determinants, full logit tensor).
# ----------------------------------------------------------------------------------------------

def det_logits(Q, K1, K2):
    """Unscaled determinant logits, shape (..., n, m1, m2): Σ_c det[q_c; k1_c; k2_c] + remainder."""
    d = Q.shape[-1]
    chunks = d // 3
    n, m1, m2 = Q.shape[-2], K1.shape[-2], K2.shape[-2]
    lead = Q.shape[:-2]
    out = np.zeros(lead + (n, m1, m2))
    for idx in np.ndindex(*lead):
        for i in range(n):
            for j1 in range(m1):
                for j2 in range(m2):
                    q, a, b = Q[idx + (i,)], K1[idx + (j1,)], K2[idx + (j2,)]
                    total = 0.0
                    for c in range(chunks):
                        s = slice(3 * c, 3 * c + 3)
                        total += np.linalg.det(np.stack([q[s], a[s], b[s]]))
                    rest = slice(3 * chunks, d)
                    total += np.sum(q[rest] * a[rest] * b[rest])
                    out[idx + (i, j1, j2)] = total
    return out


def dense_attention(Q, K1, K2, V1, V2, scale):
    logits = scale * det_logits(Q, K1, K2)
    flat = logits.reshape(logits.shape[:-2] + (-1,))
    P = np.exp(flat - flat.max(axis=-1, keepdims=True))
    P = (P / P.sum(axis=-1, keepdims=True)).reshape(logits.shape)
    return np.einsum("...iab,...ae,...be->...ie", P, V1, V2)


def _operands(rng, n, m1, m2, d, dv=3, lead=()):
    return (rng.standard_normal(lead + (n, d)), rng.standard_normal(lead + (m1, d)),
            rng.standard_normal(lead + (m2, d)), rng.standard_normal(lead + (m1, dv)),
            rng.standard_normal(lead + (m2, dv)))


def _rotations(rng, sign):
    """A random 3x3 orthogonal matrix with determinant ``sign`` (QR of a Gaussian matrix)."""
    R, upper = np.linalg.qr(rng.standard_normal((3, 3)))
    R = R * np.sign(np.diag(upper))
    if np.linalg.det(R) * sign < 0:
        R[:, 0] = -R[:, 0]
    return R


def _rotate_chunks(X, R):
    """Apply ``R`` to every full 3-chunk of the last axis (the remainder is left alone)."""
    X = X.copy()
    for c in range(X.shape[-1] // 3):
        s = slice(3 * c, 3 * c + 3)
        X[..., s] = X[..., s] @ R.T
    return X


# ----------------------------------------------------------------------------------------------

def test_lifted_width():
    assert [lifted_width("determinant", d) for d in range(1, 10)] == [1, 2, 6, 7, 8, 12, 13, 14, 18]
    assert [lifted_width("trilinear", d) for d in range(1, 5)] == [1, 2, 3, 4]


@pytest.mark.parametrize("d", range(1, 10))
@pytest.mark.parametrize("lead", [(), (2,), (2, 1)])
def test_lift_gives_determinant_logits(d, lead):
    rng = np.random.default_rng(d)
    Q, K1, K2, _, _ = _operands(rng, 2, 3, 2, d, lead=lead)
    Qp, K1p, K2p = lift("determinant", Q, K1, K2)
    assert Qp.shape == lead + (2, lifted_width("determinant", d))
    got = np.einsum("...il,...al,...bl->...iab", Qp, K1p, K2p)
    np.testing.assert_allclose(got, det_logits(Q, K1, K2), rtol=1e-12, atol=1e-12)


def test_trilinear_is_identity():
    rng = np.random.default_rng(0)
    Q, K1, K2, _, _ = _operands(rng, 2, 3, 2, 4)
    assert all(a is b for a, b in zip(lift("trilinear", Q, K1, K2), (Q, K1, K2)))
    assert all(a is b for a, b in zip(pull_back("trilinear", 4, Q, K1, K2), (Q, K1, K2)))


@pytest.mark.parametrize("d", range(1, 8))
def test_attention_on_lifted_operands_matches_dense(d):
    rng = np.random.default_rng(10 + d)
    Q, K1, K2, V1, V2 = _operands(rng, 3, 4, 2, d, lead=(2,))
    s = 1.0 / d
    got = ta.attention(*lift("determinant", Q, K1, K2), V1, V2, scale=s)
    np.testing.assert_allclose(got, dense_attention(Q, K1, K2, V1, V2, s), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("d", [2, 3, 5, 7])
def test_gradients_pulled_back_match_finite_differences(d):
    rng = np.random.default_rng(20 + d)
    Q, K1, K2, V1, V2 = _operands(rng, 2, 3, 2, d)
    dO = rng.standard_normal((2, 3))
    s = 0.7
    g = ta.attention_grad(*lift("determinant", Q, K1, K2), V1, V2, dO, scale=s)
    grads = pull_back("determinant", d, g.dQ, g.dK1, g.dK2)

    def loss(ops):
        return np.sum(dO * dense_attention(*ops, s))

    h = 1e-6
    ops = [Q, K1, K2, V1, V2]
    for k, got in enumerate(list(grads) + [g.dV1, g.dV2]):
        fd = np.zeros_like(ops[k])
        for idx in np.ndindex(*ops[k].shape):
            plus, minus = [o.copy() for o in ops], [o.copy() for o in ops]
            plus[k][idx] += h
            minus[k][idx] -= h
            fd[idx] = (loss(plus) - loss(minus)) / (2 * h)
        assert got.shape == ops[k].shape
        np.testing.assert_allclose(got, fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("d", [3, 5, 7])
def test_rotation_invariance_and_reflection_sign(d):
    rng = np.random.default_rng(30 + d)
    Q, K1, K2, V1, V2 = _operands(rng, 3, 3, 2, d)
    R = _rotations(rng, +1)
    rotated = [_rotate_chunks(X, R) for X in (Q, K1, K2)]
    s = 1.0 / d
    before = ta.attention(*lift("determinant", Q, K1, K2), V1, V2, scale=s)
    after = ta.attention(*lift("determinant", *rotated), V1, V2, scale=s)
    np.testing.assert_allclose(after, before, rtol=1e-10, atol=1e-12)

    # A reflection flips the sign of the chunk part; the d mod 3 remainder is untouched.
    F = _rotations(rng, -1)
    reflected = [_rotate_chunks(X, F) for X in (Q, K1, K2)]
    tail = slice(3 * (d // 3), d)
    remainder = np.einsum("il,al,bl->iab", Q[:, tail], K1[:, tail], K2[:, tail])
    chunk_part = det_logits(Q, K1, K2) - remainder
    np.testing.assert_allclose(det_logits(*reflected), remainder - chunk_part, rtol=1e-10, atol=1e-12)
    lifted = np.einsum("il,al,bl->iab", *lift("determinant", *reflected))
    np.testing.assert_allclose(lifted, remainder - chunk_part, rtol=1e-10, atol=1e-12)


@st.composite
def _adjoint_case(draw):
    d = draw(st.integers(1, 8))
    lead = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    rows = [draw(st.integers(1, 5)) for _ in range(3)]
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    seed = draw(st.integers(0, 2**32 - 1))
    return d, lead, rows, dtype, seed


@given(_adjoint_case())
@settings(max_examples=30, deadline=None)
def test_lift_and_pull_back_are_adjoint(case):
    d, lead, rows, dtype, seed = case
    rng = np.random.default_rng(seed)
    width = lifted_width("determinant", d)
    xs = [rng.standard_normal(lead + (r, d)).astype(dtype) for r in rows]
    ys = [rng.standard_normal(lead + (r, width)).astype(dtype) for r in rows]
    lifted = lift("determinant", *xs)
    pulled = pull_back("determinant", d, *ys)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for x, y, lx, py in zip(xs, ys, lifted, pulled):
        assert lx.dtype == dtype and py.dtype == dtype
        assert lx.shape == y.shape and py.shape == x.shape
        lhs = np.sum(lx.astype(np.float64) * y)
        rhs = np.sum(x.astype(np.float64) * py)
        scale = np.sum(np.abs(lx.astype(np.float64) * y)) + 1.0
        assert abs(lhs - rhs) <= tol * scale


def test_check_logits():
    for form in LOGIT_FORMS:
        assert check_logits(form) == form
    with pytest.raises(TypeError, match=r"logits.*int"):
        check_logits(3)
    with pytest.raises(TypeError, match=r"logits.*NoneType"):
        check_logits(None)
    with pytest.raises(ValueError, match=r"logits.*'trilinear'.*'determinant'.*'bilinear'"):
        check_logits("bilinear")
    with pytest.raises(ValueError, match="logits"):
        lift("Determinant", np.zeros((1, 3)), np.zeros((1, 3)), np.zeros((1, 3)))


def test_shape_errors():
    with pytest.raises(ValueError, match="K2 must have last dimension 4"):
        lift("determinant", np.zeros((1, 4)), np.zeros((2, 4)), np.zeros((2, 5)))
    with pytest.raises(ValueError, match=r"dK1 must have last dimension 7"):
        pull_back("determinant", 4, np.zeros((1, 7)), np.zeros((1, 4)), np.zeros((1, 7)))
    with pytest.raises(ValueError, match="d must be at least 1"):
        lifted_width("determinant", 0)
