"""Exact tensor attention against the dense float64 reference (tests/reference.py).

Every correctness test is parametrised over the registered ``(method="exact", device)`` pairs
(fixture ``impl`` in conftest.py), so a new exact implementation is tested once it is registered.

Tolerances
----------
float64: entrywise ``|x - ref| <= 1e-11 · (1 + L) · Σ|terms|`` (see ``reference.RTOL64``): the
    magnitude is the sum of absolute values of the terms that make up the entry, so the bound
    survives cancellation, and ``L`` (the largest sum of absolute logit terms) accounts for the
    absolute error of a float64 logit turning into a relative error of P.
float32: FlashAttention's rule (Dao et al. 2022, "numerical error of our implementation is at most
    c times that of a baseline in the same precision"): the error of the float32 result against
    the float64 reference (evaluated on the same float32 inputs, cast exactly) must be at most
    ``2 ×`` the error of a plain float32 NumPy implementation of the same formulas, plus an absolute
    floor of ``4 · eps32 · Σ|terms|`` per entry (rounding the exact result to float32 alone costs
    half an ulp; and the naive error can be zero by luck on tiny inputs). The package promises
    float64 accumulation inside, so in practice it must be far better than the naive float32 code;
    ``test_float32_forward_is_rounded_float64_result`` checks that stronger promise for O and lse.
"""

from __future__ import annotations

import os
import zlib

import numpy as np
import pytest

import tattn_numba as ta
from tattn_numba import _cuda
from reference import (
    EPS32,
    assert_forward_matches,
    assert_grads_match,
    central_difference_gradient,
    dense_attention,
    dense_attention_grad,
    dense_logits,
    dense_magnitudes,
    float32_tolerance,
    make_inputs,
)

pytestmark = pytest.mark.usefixtures("warm_kernels")

NAMES = ("Q", "K1", "K2", "V1", "V2")

# (batch, n, m1, m2, d, dv): m1 != m2 and dv != d wherever possible; 0, 1 and 2 leading dims.
SHAPES = [
    ((), 1, 1, 1, 1, 1),
    ((), 5, 7, 3, 4, 2),
    ((), 2, 3, 11, 1, 6),
    ((2,), 6, 4, 9, 3, 5),
    ((1,), 3, 2, 5, 6, 1),
    ((2, 3), 4, 5, 6, 2, 3),
    ((), 12, 11, 10, 5, 7),
    ((3,), 9, 1, 12, 2, 1),
]
CAUSAL_SHAPES = [
    ((), 1, 1, 1, 1, 1),
    ((), 7, 7, 7, 3, 4),
    ((2,), 12, 12, 12, 4, 2),
    ((2, 2), 5, 5, 5, 2, 3),
]
SHAPE_CASES = [pytest.param(s, False, id="x".join(map(str, s[0] + s[1:]))) for s in SHAPES] + [
    pytest.param(s, True, id="causal-" + "x".join(map(str, s[0] + s[1:]))) for s in CAUSAL_SHAPES
]
SCALES = [None, "1/sqrt(d)", 0.37, 2.5]
DTYPES = [np.float32, np.float64]


def _scale(choice, d):
    return 1.0 / np.sqrt(d) if choice == "1/sqrt(d)" else choice


def _seed(*parts) -> int:
    """A reproducible seed from the test parameters (str hashes are salted per process)."""
    return zlib.crc32(repr(parts).encode())


# ----------------------------------------------------------------------------------------------
# The reference itself (runs without the package's kernels)
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("causal", [False, True])
def test_reference_backward_matches_finite_differences(causal):
    rng = np.random.default_rng(11)
    shape = (4, 4, 4, 3, 2) if causal else (3, 4, 5, 3, 2)
    X = make_inputs(rng, (2,), *shape, with_dO=True)
    G = X.pop()
    grads = dense_attention_grad(*X, G, 0.7, causal)
    for k in range(5):
        def loss(x, k=k):
            Y = list(X)
            Y[k] = x
            return np.sum(dense_attention(*Y, 0.7, causal)[0] * G)

        fd = central_difference_gradient(loss, X[k])
        np.testing.assert_allclose(grads[k], fd, rtol=1e-7, atol=1e-9, err_msg=NAMES[k])


@pytest.mark.parametrize("causal", [False, True])
def test_reference_forward_matches_explicit_loops(causal):
    rng = np.random.default_rng(12)
    n, m1, m2, d, dv = (4, 4, 4, 3, 2) if causal else (3, 2, 5, 3, 2)
    Q, K1, K2, V1, V2 = make_inputs(rng, (), n, m1, m2, d, dv)
    s = 0.9
    O, lse = dense_attention(Q, K1, K2, V1, V2, s, causal)
    for i in range(n):
        logits, values = [], []
        for j1 in range(m1):
            for j2 in range(m2):
                if causal and (j1 > i or j2 > i):
                    continue
                logits.append(s * sum(Q[i, l] * K1[j1, l] * K2[j2, l] for l in range(d)))
                values.append(V1[j1] * V2[j2])
        w = np.exp(np.array(logits))
        np.testing.assert_allclose(O[i], (w[:, None] * np.array(values)).sum(0) / w.sum(), rtol=1e-13, atol=1e-14)
        np.testing.assert_allclose(lse[i], np.log(w.sum()), rtol=1e-13, atol=1e-14)


# ----------------------------------------------------------------------------------------------
# Seeded random cases against the reference
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("scale_choice", SCALES, ids=["default", "rsqrt", "0.37", "2.5"])
@pytest.mark.parametrize("shape,causal", SHAPE_CASES)
def test_forward_matches_reference(impl, shape, causal, scale_choice, dtype):
    batch, n, m1, m2, d, dv = shape
    rng = np.random.default_rng(_seed(shape, causal, scale_choice, dtype.__name__))
    X = make_inputs(rng, batch, n, m1, m2, d, dv, dtype)
    scale = _scale(scale_choice, d)
    O, state = ta.attention_forward(*X, scale=scale, causal=causal, **impl)
    assert O.dtype == dtype and O.shape == batch + (n, dv)
    assert_forward_matches(O, state.lse, *X, scale=scale, causal=causal)
    O2 = ta.attention(*X, scale=scale, causal=causal, **impl)
    assert O2.dtype == dtype
    assert_forward_matches(O2, None, *X, scale=scale, causal=causal)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("scale_choice", SCALES, ids=["default", "rsqrt", "0.37", "2.5"])
@pytest.mark.parametrize("shape,causal", SHAPE_CASES)
def test_gradients_match_reference(impl, shape, causal, scale_choice, dtype):
    batch, n, m1, m2, d, dv = shape
    rng = np.random.default_rng(_seed("grad", shape, causal, scale_choice, dtype.__name__))
    *X, dO = make_inputs(rng, batch, n, m1, m2, d, dv, dtype, with_dO=True)
    scale = _scale(scale_choice, d)
    grads = ta.attention_grad(*X, dO, scale=scale, causal=causal, **impl)
    assert isinstance(grads, ta.AttentionGrads)
    assert grads._fields == ("dQ", "dK1", "dK2", "dV1", "dV2")
    assert_grads_match(grads, *X, dO, scale=scale, causal=causal)


@pytest.mark.parametrize("magnitude", [1e-3, 3.0, 8.0])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_forward_and_gradients_over_entry_magnitudes(impl, magnitude, causal, dtype):
    """Tiny entries (nearly uniform P) up to large ones (|logit| in the hundreds, P nearly one-hot)."""
    rng = np.random.default_rng(_seed("mag", magnitude, causal, dtype.__name__))
    shape = (6, 6, 6, 3, 2) if causal else (5, 6, 4, 3, 2)
    *X, dO = make_inputs(rng, (2,), *shape, dtype, magnitude=magnitude, with_dO=True)
    O, state = ta.attention_forward(*X, causal=causal, **impl)
    assert_forward_matches(O, state.lse, *X, causal=causal)
    assert_grads_match(ta.attention_backward(state, dO), *X, dO, causal=causal)


# ----------------------------------------------------------------------------------------------
# Gradients against central finite differences of the implementation itself (float64)
# ----------------------------------------------------------------------------------------------

FD_CASES = [
    pytest.param((), (3, 4, 2, 3, 2), False, None, id="plain"),
    pytest.param((2,), (3, 2, 3, 2, 3), False, 0.8, id="batched-scale0.8"),
    pytest.param((), (4, 4, 4, 2, 2), True, None, id="causal"),
]


@pytest.mark.parametrize("which", range(5), ids=NAMES)
@pytest.mark.parametrize("batch,shape,causal,scale", FD_CASES)
def test_gradients_match_finite_differences(impl, batch, shape, causal, scale, which):
    if batch:
        _skip_on_cuda_simulator(impl, "15 s each there; batches are covered by test_batch_entries_are_independent "
                                      "and the reference tests")
    rng = np.random.default_rng(_seed("fd", batch, shape, causal, which))
    *X, G = make_inputs(rng, batch, *shape, with_dO=True)
    grads = ta.attention_grad(*X, G, scale=scale, causal=causal, **impl)

    def loss(x):
        Y = list(X)
        Y[which] = x
        return np.sum(ta.attention(*Y, scale=scale, causal=causal, **impl) * G)

    fd = central_difference_gradient(loss, X[which])
    np.testing.assert_allclose(grads[which], fd, rtol=1e-7, atol=1e-9, err_msg=NAMES[which])


def test_attention_grad_equals_forward_then_backward(impl):
    rng = np.random.default_rng(3)
    for causal, shape in ((False, (5, 3, 4, 3, 2)), (True, (5, 5, 5, 3, 2))):
        *X, dO = make_inputs(rng, (2,), *shape, with_dO=True)
        O, state = ta.attention_forward(*X, causal=causal, scale=0.6, **impl)
        g1 = ta.attention_backward(state, dO)
        g2 = ta.attention_grad(*X, dO, causal=causal, scale=0.6, **impl)
        for name, a, b in zip(g1._fields, g1, g2):
            np.testing.assert_allclose(a, b, rtol=1e-14, atol=1e-15, err_msg=name)
        # the state can be reused for a second upstream gradient
        g3 = ta.attention_backward(state, 2.0 * dO)
        for name, a, b in zip(g1._fields, g1, g3):
            np.testing.assert_allclose(2.0 * a, b, rtol=1e-13, atol=1e-15, err_msg=name)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("causal", [False, True])
def test_state_fields(impl, dtype, causal):
    rng = np.random.default_rng(4)
    shape = (4, 4, 4, 3, 2) if causal else (4, 3, 5, 3, 2)
    X = make_inputs(rng, (2, 1), *shape, dtype)
    O, state = ta.attention_forward(*X, causal=causal, **impl)
    assert isinstance(state, ta.AttentionState)
    assert state.O is O or np.array_equal(state.O, O)
    assert state.lse.shape == (2, 1, shape[0]) and state.lse.dtype == np.float64
    assert state.scale == pytest.approx(1.0 / 3.0, rel=1e-15)
    assert state.causal is causal
    assert state.method == impl["method"] and state.device == impl["device"]
    assert state.options == {}
    _, state2 = ta.attention_forward(*X, causal=causal, scale=0.25, **impl)
    assert state2.scale == 0.25


# ----------------------------------------------------------------------------------------------
# Hand-picked cases
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("causal", [False, True])
def test_single_query_single_key(impl, dtype, causal):
    """n = m1 = m2 = 1: P = 1, O = V1 ∘ V2, lse = the one logit, dQ = dK1 = dK2 = 0."""
    Q = np.array([[0.5, -1.0, 2.0]], dtype)
    K1 = np.array([[1.5, 0.25, -0.5]], dtype)
    K2 = np.array([[-2.0, 1.0, 0.75]], dtype)
    V1 = np.array([[1.0, -2.0]], dtype)
    V2 = np.array([[3.0, 0.5]], dtype)
    dO = np.array([[0.25, -1.5]], dtype)
    O, state = ta.attention_forward(Q, K1, K2, V1, V2, causal=causal, **impl)
    assert O.dtype == dtype
    np.testing.assert_allclose(O, [[3.0, -1.0]], rtol=4e-16 if dtype == np.float64 else EPS32)
    logit = float(np.sum(Q.astype(float) * K1 * K2)) / 3.0
    np.testing.assert_allclose(state.lse, [logit], rtol=1e-6 if dtype == np.float32 else 1e-14)
    g = ta.attention_backward(state, dO)
    tol = 1e-6 if dtype == np.float32 else 1e-14
    for z in (g.dQ, g.dK1, g.dK2):
        np.testing.assert_allclose(z, 0.0, atol=tol)
    np.testing.assert_allclose(g.dV1, dO * V2, rtol=tol)
    np.testing.assert_allclose(g.dV2, dO * V1, rtol=tol)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_all_equal_logits_average_over_pairs(impl, dtype):
    """Q = 0 makes every logit 0: P is uniform and O = mean over pairs of V1∘V2 = mean(V1)∘mean(V2)."""
    rng = np.random.default_rng(6)
    _, K1, K2, V1, V2 = make_inputs(rng, (2,), 3, 4, 6, 3, 5, dtype)
    Q = np.zeros((2, 3, 3), dtype)
    O, state = ta.attention_forward(Q, K1, K2, V1, V2, **impl)
    expect = V1.astype(float).mean(axis=-2, keepdims=True) * V2.astype(float).mean(axis=-2, keepdims=True)
    tol = 4 * EPS32 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(O, np.broadcast_to(expect, O.shape), rtol=tol, atol=tol * np.abs(expect).max())
    np.testing.assert_allclose(state.lse, np.log(24.0), rtol=1e-13)
    # K1 = 0 also makes all logits equal, whatever Q is
    Q2 = rng.standard_normal((2, 3, 3)).astype(dtype)
    O2 = ta.attention(Q2, np.zeros_like(K1), K2, V1, V2, **impl)
    np.testing.assert_allclose(O2, np.broadcast_to(expect, O.shape), rtol=tol, atol=tol * np.abs(expect).max())


def test_all_equal_logits_causal(impl):
    """Causal with Q = 0: row i averages over its (i+1)^2 allowed pairs."""
    rng = np.random.default_rng(7)
    n = 6
    _, K1, K2, V1, V2 = make_inputs(rng, (), n, n, n, 2, 3)
    O, state = ta.attention_forward(np.zeros((n, 2)), K1, K2, V1, V2, causal=True, **impl)
    for i in range(n):
        expect = V1[: i + 1].mean(0) * V2[: i + 1].mean(0)
        np.testing.assert_allclose(O[i], expect, rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(state.lse[i], 2 * np.log(i + 1), atol=1e-13)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_huge_logits_concentrate_on_argmax_pair(impl, dtype):
    """Logits up to +1e4 (exp overflows): P is one-hot on the argmax pair, lse = max logit exactly.

    d = 1, scale = 1: logit = q·k1·k2. Row 0 (q = 100): max 1e4 at (1, 1), runner-up 5e3.
    Row 1 (q = -100): max 1e4 at (1, 2), runner-up 5e3; the minimum logits are -1e4.
    """
    Q = np.array([[100.0], [-100.0]], dtype)
    K1 = np.array([[1.0], [2.0], [-1.0]], dtype)
    K2 = np.array([[10.0], [50.0], [-50.0], [3.0]], dtype)
    rng = np.random.default_rng(8)
    V1 = rng.standard_normal((3, 2)).astype(dtype)
    V2 = rng.standard_normal((4, 2)).astype(dtype)
    O, state = ta.attention_forward(Q, K1, K2, V1, V2, scale=1.0, **impl)
    assert np.all(np.isfinite(O))
    expect = np.stack([V1[1].astype(float) * V2[1], V1[1].astype(float) * V2[2]])
    np.testing.assert_allclose(O, expect, rtol=EPS32 if dtype == np.float32 else 1e-14)
    np.testing.assert_allclose(state.lse, [1e4, 1e4], rtol=1e-14)
    dO = rng.standard_normal((2, 2)).astype(dtype)
    g = ta.attention_backward(state, dO)
    assert all(np.all(np.isfinite(x)) for x in g)
    assert_grads_match(g, Q, K1, K2, V1, V2, dO, scale=1.0)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("shift", [-1e4, 1e4, -600.0, 800.0])
def test_large_common_logit_offset(impl, dtype, shift):
    """All logits of a row = shift + O(1): a naive exp under/overflows (0/0 or inf/inf).

    The first feature adds ``shift`` to every logit of the row (K1[:,0] = K2[:,0] = 1), which
    softmax ignores: O equals the result without that feature and lse moves by ``shift``.
    """
    rng = np.random.default_rng(9)
    n, m1, m2, dv = 3, 4, 5, 2
    Qs = rng.uniform(-1, 1, (n, 2))
    K1s = rng.uniform(-1, 1, (m1, 2))
    K2s = rng.uniform(-1, 1, (m2, 2))
    V1 = rng.standard_normal((m1, dv))
    V2 = rng.standard_normal((m2, dv))
    Q = np.column_stack([np.full(n, shift), Qs]).astype(dtype)
    K1 = np.column_stack([np.ones(m1), K1s]).astype(dtype)
    K2 = np.column_stack([np.ones(m2), K2s]).astype(dtype)
    V1, V2 = V1.astype(dtype), V2.astype(dtype)
    O, state = ta.attention_forward(Q, K1, K2, V1, V2, scale=1.0, **impl)
    assert np.all(np.isfinite(O)) and np.all(np.isfinite(state.lse))
    assert_forward_matches(O, state.lse, Q, K1, K2, V1, V2, scale=1.0)
    O0, lse0 = dense_attention(Q[:, 1:], K1[:, 1:], K2[:, 1:], V1, V2, scale=1.0)
    magO = dense_magnitudes(Q, K1, K2, V1, V2, scale=1.0)["O"]
    if dtype == np.float64:
        # The float64 logit shift + x is rounded at |shift|·eps64 ~ 2e-12 (a relative error of P).
        tolO, tol_lse = 1e-10 * magO, 1e-12 * np.abs(lse0 + shift)
    else:
        # float32 logits are rounded at |shift|·eps32 (6e-4 at 1e4): FlashAttention's rule against
        # the plain float32 computation of the same shifted problem.
        naiveO, naivelse = dense_attention(Q, K1, K2, V1, V2, scale=1.0, dtype=np.float32)
        tolO = float32_tolerance(O0, naiveO, magO)
        tol_lse = float32_tolerance(lse0 + shift, naivelse, np.abs(lse0 + shift))
    assert np.all(np.abs(O - O0) <= tolO), np.max(np.abs(O - O0) / tolO)
    assert np.all(np.abs(state.lse - (lse0 + shift)) <= tol_lse)
    dO = rng.standard_normal((n, dv)).astype(dtype)
    assert_grads_match(ta.attention_backward(state, dO), Q, K1, K2, V1, V2, dO, scale=1.0)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_causal_first_row_sees_only_pair_00(impl, dtype):
    rng = np.random.default_rng(10)
    n = 5
    *X, dO = make_inputs(rng, (), n, n, n, 3, 2, dtype, magnitude=2.0, with_dO=True)
    Q, K1, K2, V1, V2 = X
    O, state = ta.attention_forward(*X, causal=True, **impl)
    np.testing.assert_array_equal(O[0], (V1[0].astype(float) * V2[0]).astype(dtype))
    logit00 = dense_logits(Q, K1, K2)[0, 0, 0]
    # a float32 logit is computed in float32: rounded at a few eps32 of its term sum
    rel = 4 * EPS32 * (1.0 + dense_magnitudes(*X, causal=True)["logit"]) if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(state.lse[0], logit00, rtol=rel, atol=rel)
    # the last row sees everything: it equals the non-causal result for that row
    O_full = ta.attention(*X, causal=False, **impl)
    tol = 4 * EPS32 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(O[-1], O_full[-1], rtol=tol, atol=tol)
    # Row 0's upstream gradient only reaches K1[0], K2[0], V1[0], V2[0] (and, P[0] being one-hot,
    # dQ[0] is zero up to rounding): rows >= 1 of every gradient, and dQ, are (near) zero.
    dO0 = np.zeros_like(dO)
    dO0[0] = dO[0]
    g = ta.attention_backward(state, dO0)
    assert_grads_match(g, *X, dO0, causal=True)
    np.testing.assert_allclose(g.dV1[0], dO[0] * V2[0], rtol=tol)
    np.testing.assert_allclose(g.dV2[0], dO[0] * V1[0], rtol=tol)
    for name in ("dK1", "dK2", "dV1", "dV2"):
        x = getattr(g, name)
        np.testing.assert_allclose(x[1:], 0.0, atol=1e-12 * np.abs(x[0]).max(), err_msg=name)
    np.testing.assert_allclose(g.dQ[1:], 0.0, atol=1e-12 * np.abs(g.dV1[0]).max(), err_msg="dQ")


def test_causal_future_keys_do_not_leak(impl):
    """Changing rows >= t of K1, K2, V1, V2 must leave causal O[:t] and lse[:t] unchanged."""
    rng = np.random.default_rng(13)
    n, t = 9, 4
    X = make_inputs(rng, (2,), n, n, n, 3, 2)
    O, state = ta.attention_forward(*X, causal=True, **impl)
    Y = [x.copy() for x in X]
    for k in range(1, 5):
        Y[k][:, t:] = 50.0 * rng.standard_normal(Y[k][:, t:].shape)
    O2, state2 = ta.attention_forward(*Y, causal=True, **impl)
    np.testing.assert_allclose(O2[:, :t], O[:, :t], rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(state2.lse[:, :t], state.lse[:, :t], rtol=1e-13, atol=1e-15)
    assert not np.allclose(O2[:, t:], O[:, t:])


@pytest.mark.parametrize("causal", [False, True])
def test_swapping_the_two_key_value_pairs(impl, causal):
    """(K1, V1) <-> (K2, V2) gives the same O (the logit and V1∘V2 are symmetric), and swaps grads."""
    rng = np.random.default_rng(14)
    shape = (5, 5, 5, 3, 4) if causal else (5, 3, 6, 3, 4)
    *X, dO = make_inputs(rng, (2,), *shape, with_dO=True)
    Q, K1, K2, V1, V2 = X
    O, st = ta.attention_forward(Q, K1, K2, V1, V2, causal=causal, **impl)
    Os, sts = ta.attention_forward(Q, K2, K1, V2, V1, causal=causal, **impl)
    np.testing.assert_allclose(Os, O, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(sts.lse, st.lse, rtol=1e-13, atol=1e-14)
    g = ta.attention_backward(st, dO)
    gs = ta.attention_backward(sts, dO)
    for a, b, name in ((g.dQ, gs.dQ, "dQ"), (g.dK1, gs.dK2, "dK1"), (g.dK2, gs.dK1, "dK2"),
                       (g.dV1, gs.dV2, "dV1"), (g.dV2, gs.dV1, "dV2")):
        np.testing.assert_allclose(b, a, rtol=1e-11, atol=1e-13, err_msg=name)


def _non_contiguous_views(rng, batch, n, m1, m2, d, dv, dtype):
    """The same kinds of arrays as make_inputs, as strided views of bigger buffers."""
    Q = np.asfortranarray(rng.standard_normal(batch + (n, d)).astype(dtype))   # Fortran order
    K1 = rng.standard_normal(batch + (2 * m1, d)).astype(dtype)[..., ::2, :]  # row stride 2
    K2 = np.swapaxes(rng.standard_normal(batch + (d, m2)).astype(dtype), -1, -2)  # transposed view
    V1 = rng.standard_normal(batch + (m1, dv)).astype(dtype)[..., ::-1, :]   # negative stride
    V2 = rng.standard_normal(batch + (m2, dv + 3)).astype(dtype)[..., 1 : 1 + dv]  # column slice
    dO = rng.standard_normal(batch + (n, 2 * dv)).astype(dtype)[..., ::-2]   # negative column stride
    return [Q, K1, K2, V1, V2, dO]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("batch", [(), (3,)], ids=["unbatched", "batched"])
def test_non_contiguous_inputs(impl, dtype, batch):
    rng = np.random.default_rng(15)
    views = _non_contiguous_views(rng, batch, 4, 5, 3, 3, 2, dtype)
    assert not any(v.flags.c_contiguous for v in views[1:])
    copies = [np.ascontiguousarray(v) for v in views]
    O_view = ta.attention(*views[:5], **impl)
    O_copy = ta.attention(*copies[:5], **impl)
    np.testing.assert_allclose(O_view, O_copy, rtol=1e-6 if dtype == np.float32 else 1e-14)
    assert_forward_matches(O_view, None, *copies[:5])
    g_view = ta.attention_grad(*views, **impl)
    g_copy = ta.attention_grad(*copies, **impl)
    for name, a, b in zip(g_view._fields, g_view, g_copy):
        np.testing.assert_allclose(a, b, rtol=1e-6 if dtype == np.float32 else 1e-13, atol=1e-12, err_msg=name)
    # batched leading dims given as a non-contiguous view of a (n, B, d)-laid-out buffer
    if batch:
        Qt = np.swapaxes(rng.standard_normal((4, 3, 3)).astype(dtype), 0, 1)
        np.testing.assert_allclose(
            ta.attention(Qt, *copies[1:5], **impl), ta.attention(Qt.copy(), *copies[1:5], **impl),
            rtol=1e-6 if dtype == np.float32 else 1e-14,
        )


def test_inputs_are_not_modified(impl):
    rng = np.random.default_rng(16)
    for causal, shape in ((False, (4, 3, 5, 3, 2)), (True, (4, 4, 4, 3, 2))):
        for dtype in DTYPES:
            arrays = make_inputs(rng, (2,), *shape, dtype, with_dO=True)
            views = _non_contiguous_views(rng, (2,), *shape, dtype)
            for args in (arrays, views):
                before = [a.copy() for a in args]
                strides = [a.strides for a in args]
                O, state = ta.attention_forward(*args[:5], causal=causal, **impl)
                ta.attention_backward(state, args[5])
                g = ta.attention_grad(*args, causal=causal, **impl)
                ta.attention(*args[:5], causal=causal, **impl)
                for name, a, b, st in zip(NAMES + ("dO",), args, before, strides):
                    np.testing.assert_array_equal(a, b, err_msg=f"{name} was modified")
                    assert a.strides == st
                # outputs are fresh arrays, not views of the inputs
                for out in (O, *g):
                    assert not any(np.shares_memory(out, a) for a in args)


def test_array_like_and_integer_scale(impl):
    """Nested lists are array-like (float64); an int scale is a real number."""
    rng = np.random.default_rng(17)
    X = make_inputs(rng, (), 3, 2, 4, 2, 2)
    O = ta.attention(*X, scale=2, **impl)
    O_list = ta.attention(*(x.tolist() for x in X), scale=2, **impl)
    assert O_list.dtype == np.float64
    np.testing.assert_allclose(O_list, O, rtol=1e-15)
    np.testing.assert_allclose(ta.attention(*X, scale=2.0, **impl), O, rtol=1e-15)
    np.testing.assert_allclose(ta.attention(*X, scale=np.float32(2.0), **impl), O, rtol=1e-15)


def test_batch_entries_are_independent(impl):
    """Each leading index is its own problem: batched results equal per-slice calls."""
    rng = np.random.default_rng(18)
    for causal, shape in ((False, (5, 4, 6, 3, 2)), (True, (6, 6, 6, 3, 2))):
        *X, dO = make_inputs(rng, (2, 3), *shape, with_dO=True)
        X[0][1, 2] *= 10.0  # make the slices differ in scale too
        O = ta.attention(*X, causal=causal, **impl)
        g = ta.attention_grad(*X, dO, causal=causal, **impl)
        for b in np.ndindex(2, 3):
            Ob = ta.attention(*(x[b] for x in X), causal=causal, **impl)
            np.testing.assert_allclose(O[b], Ob, rtol=1e-13, atol=1e-15)
            gb = ta.attention_grad(*(x[b] for x in X), dO[b], causal=causal, **impl)
            for name, a, c in zip(g._fields, g, gb):
                np.testing.assert_allclose(a[b], c, rtol=1e-12, atol=1e-14, err_msg=f"{name}{b}")


# ----------------------------------------------------------------------------------------------
# Sizes that cross tile boundaries (config.QUERY_TILE = 8 query rows, KEY_TILE = 256 K2 rows by
# default) and exercise the parallel reductions of dK1, dK2, dV1, dV2.
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize(
    "shape",
    [(3, 4, 300, 2, 2), (3, 300, 4, 2, 2), (37, 5, 6, 3, 2), (17, 9, 257, 2, 3), (4, 3, 5, 33, 67)],
    ids=["m2=300", "m1=300", "n=37", "n=17,m2=257", "d=33,dv=67"],
)
def test_tile_boundaries_non_causal(impl, dtype, shape):
    if shape != (4, 3, 5, 33, 67):
        _skip_on_cuda_simulator(impl, "10-60 s each there; d=33,dv=67 crosses the lanes, and the small shapes of "
                                      "the reference tests cross its key and query tiles")
    rng = np.random.default_rng(_seed("tile", shape, dtype.__name__))
    *X, dO = make_inputs(rng, (3,), *shape, dtype, with_dO=True)
    O, state = ta.attention_forward(*X, **impl)
    assert_forward_matches(O, state.lse, *X)
    for _ in range(2):  # repeated: a race in a reduction shows up as run-to-run differences
        assert_grads_match(ta.attention_backward(state, dO), *X, dO)


def _skip_on_cuda_simulator(impl, why: str) -> None:
    """Sizes meant for the CPU tiles cost minutes in numba-cuda's simulator (Python threads);
    its own tiles (3 key rows, 2 query rows, 4 lanes; conftest.py) are crossed by the small
    shapes of every other test."""
    if impl["device"] == "cuda" and _cuda.simulator_enabled() and not os.environ.get("TATTN_NUMBA_FULL_SIMULATOR"):
        pytest.skip(f"under the CUDA simulator (TATTN_NUMBA_FULL_SIMULATOR=1 runs it): {why}")


def test_tile_boundaries_causal(impl):
    """n = m1 = m2 = 260: compare selected rows with the dense non-causal problem on the prefix,
    and check the global identities <dQ,Q> = <dK1,K1> = <dK2,K2>, <dV1,V1> = <dV2,V2> = <dO,O>."""
    _skip_on_cuda_simulator(impl, "14 minutes there; the causal shapes of the reference tests cross its tiles")
    rng = np.random.default_rng(19)
    n, d, dv = 260, 2, 2
    *X, dO = make_inputs(rng, (), n, n, n, d, dv, with_dO=True)
    Q, K1, K2, V1, V2 = X
    O, state = ta.attention_forward(*X, causal=True, **impl)
    g = ta.attention_backward(state, dO)
    for i in (0, 1, 7, 8, 9, 100, 255, 256, 257, 259):
        args = (Q[i : i + 1], K1[: i + 1], K2[: i + 1], V1[: i + 1], V2[: i + 1])
        refO, reflse = dense_attention(*args)
        np.testing.assert_allclose(O[i], refO[0], rtol=1e-11, atol=1e-12, err_msg=f"row {i}")
        np.testing.assert_allclose(state.lse[i], reflse[0], rtol=1e-12, err_msg=f"row {i}")
        refdQ = dense_attention_grad(*args, dO[i : i + 1])[0]
        np.testing.assert_allclose(g.dQ[i], refdQ[0], rtol=1e-10, atol=1e-12, err_msg=f"dQ row {i}")
    # Euler identities: scaling Q, K1 or K2 by c scales every logit by c, and O is linear in V1
    # and in V2. Tolerances relative to the sums of absolute terms.
    a, b, c = (np.sum(x * y) for x, y in ((g.dQ, Q), (g.dK1, K1), (g.dK2, K2)))
    size = sum(np.sum(np.abs(x * y)) for x, y in ((g.dQ, Q), (g.dK1, K1), (g.dK2, K2)))
    assert abs(a - b) <= 1e-10 * size and abs(a - c) <= 1e-10 * size, (a, b, c)
    e, f, h = np.sum(g.dV1 * V1), np.sum(g.dV2 * V2), np.sum(dO * O)
    size = np.sum(np.abs(dO * O)) + np.sum(np.abs(g.dV1 * V1)) + np.sum(np.abs(g.dV2 * V2))
    assert abs(e - h) <= 1e-10 * size and abs(f - h) <= 1e-10 * size, (e, f, h)
