"""The polynomial surrogate (method="poly") against the dense float64 reference.

Approximate results are tested against their certificates, not against equality: the output
within ``plan.output_bound`` and every gradient within ``poly_gradient_bounds`` of the exact
values; plus the shape of the error (falls with the degree, reaches round-off at small radii)
and that the bounds are not vacuous.
"""

from __future__ import annotations

from math import comb

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tattn_numba as ta
from reference import dense_attention, dense_attention_grad
from tattn_numba import config

FAMILIES = ["chebyshev", "taylor"]


def uniform_inputs(rng, batch, n, m1, m2, d, dv, bound, dtype=np.float64):
    shapes = [(n, d), (m1, d), (m2, d), (m1, dv), (m2, dv), (n, dv)]
    return [rng.uniform(-bound, bound, tuple(batch) + s).astype(dtype) for s in shapes]


def rounding_floor(*arrays):
    """Round-off allowance on top of a certificate: 1e-12 of the largest value involved."""
    return 1e-12 * max(float(np.abs(a).max()) for a in arrays) + 1e-300


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("degree", [1, 2, 4, 6])
def test_output_and_gradients_within_certificates(family, degree):
    rng = np.random.default_rng(degree)
    Q, K1, K2, V1, V2, dO = uniform_inputs(rng, (2,), 9, 7, 8, 3, 2, bound=1.0)
    O, state = ta.attention_forward(Q, K1, K2, V1, V2, method="poly", degree=degree, family=family)
    plan = state.certificate
    assert plan.degree == degree and plan.rank == comb(3 + degree, degree)
    O_ref, _ = dense_attention(Q, K1, K2, V1, V2)
    assert np.all(np.abs(O - O_ref) <= plan.output_bound + rounding_floor(O_ref))
    grads = ta.attention_backward(state, dO)
    bounds = ta.poly_gradient_bounds(state, dO)
    for name, g, ref, bound in zip(ta.AttentionGrads._fields, grads,
                                   dense_attention_grad(Q, K1, K2, V1, V2, dO), bounds):
        assert g.shape == ref.shape == bound.shape, name
        assert np.all(np.abs(g - ref) <= bound + rounding_floor(ref)), name


@given(
    n=st.integers(1, 7), m1=st.integers(1, 7), m2=st.integers(1, 7), d=st.integers(1, 4),
    dv=st.integers(1, 3), bound=st.sampled_from([0.3, 1.0, 1.6]), degree=st.integers(0, 7),
    family=st.sampled_from(FAMILIES), seed=st.integers(0, 2**32 - 1), scale=st.sampled_from([None, 0.5]),
    causal=st.booleans(),
)
def test_certificates_hold_on_random_inputs(n, m1, m2, d, dv, bound, degree, family, seed, scale, causal):
    rng = np.random.default_rng(seed)
    if causal:
        m1 = m2 = n
    Q, K1, K2, V1, V2, dO = uniform_inputs(rng, (), n, m1, m2, d, dv, bound)
    options = dict(scale=scale, causal=causal, method="poly", degree=degree, family=family)
    plan = ta.poly_plan(Q, K1, K2, V1, V2, scale=scale, degree=degree, family=family)
    if not np.all(plan.epsilon < 1.0):
        with pytest.raises(ValueError, match="degree"):
            ta.attention(Q, K1, K2, V1, V2, **options)
        return
    O, state = ta.attention_forward(Q, K1, K2, V1, V2, **options)
    O_ref, _ = dense_attention(Q, K1, K2, V1, V2, scale, causal)
    assert np.all(np.abs(O - O_ref) <= state.certificate.output_bound + rounding_floor(O_ref))
    grads = ta.attention_backward(state, dO)
    bounds = ta.poly_gradient_bounds(state, dO)
    for g, ref, b in zip(grads, dense_attention_grad(Q, K1, K2, V1, V2, dO, scale, causal), bounds):
        assert np.all(np.abs(g - ref) <= b + rounding_floor(ref))


@pytest.mark.parametrize("chunk_rows", [3, 8192])
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("degree", [2, 5])
def test_causal_within_certificates(family, degree, chunk_rows, monkeypatch):
    """Causal: prefix scans forward, downdating reverse scan backward; chunk_rows = 3 makes the
    reverse scan restart from its checkpoints several times."""
    monkeypatch.setattr(config, "POLY_CHUNK_ROWS", chunk_rows)
    rng = np.random.default_rng(degree)
    Q, K1, K2, V1, V2, dO = uniform_inputs(rng, (2,), 10, 10, 10, 3, 2, bound=1.2)
    O, state = ta.attention_forward(Q, K1, K2, V1, V2, causal=True, method="poly", degree=degree, family=family)
    O_ref, _ = dense_attention(Q, K1, K2, V1, V2, causal=True)
    assert np.all(np.abs(O - O_ref) <= state.certificate.output_bound + rounding_floor(O_ref))
    grads = ta.attention_backward(state, dO)
    bounds = ta.poly_gradient_bounds(state, dO)
    refs = dense_attention_grad(Q, K1, K2, V1, V2, dO, causal=True)
    for name, g, ref, bound in zip(ta.AttentionGrads._fields, grads, refs, bounds):
        assert np.all(np.abs(g - ref) <= bound + rounding_floor(ref)), name


def test_causal_reaches_round_off_at_high_degree():
    rng = np.random.default_rng(12)
    Q, K1, K2, V1, V2, dO = uniform_inputs(rng, (), 9, 9, 9, 2, 2, bound=0.8)
    O, state = ta.attention_forward(Q, K1, K2, V1, V2, causal=True, method="poly", degree=12)
    np.testing.assert_allclose(O, dense_attention(Q, K1, K2, V1, V2, causal=True)[0], rtol=0, atol=1e-13)
    for g, ref in zip(ta.attention_backward(state, dO), dense_attention_grad(Q, K1, K2, V1, V2, dO, causal=True)):
        np.testing.assert_allclose(g, ref, rtol=0, atol=1e-12 * max(1.0, np.abs(ref).max()))


def test_causal_first_row_attends_to_the_first_pair_only():
    rng = np.random.default_rng(13)
    Q, K1, K2, V1, V2, _ = uniform_inputs(rng, (), 6, 6, 6, 2, 3, bound=1.0)
    O = ta.attention(Q, K1, K2, V1, V2, causal=True, method="poly", degree=3)
    np.testing.assert_allclose(O[0], V1[0] * V2[0], rtol=1e-13)


@pytest.mark.parametrize("family", FAMILIES)
def test_tolerance_is_met_with_the_smallest_certified_degree(family):
    rng = np.random.default_rng(1)
    Q, K1, K2, V1, V2, dO = uniform_inputs(rng, (), 12, 10, 11, 4, 3, bound=1.0)
    O_ref, _ = dense_attention(Q, K1, K2, V1, V2)
    for tol in (1e-2, 1e-5, 1e-9):
        O, state = ta.attention_forward(Q, K1, K2, V1, V2, method="poly", tol=tol, family=family)
        plan = state.certificate
        assert plan.max_output_bound <= tol
        assert np.abs(O - O_ref).max() <= tol
        if plan.degree > 0:
            lower = ta.poly_plan(Q, K1, K2, V1, V2, degree=plan.degree - 1, family=family)
            assert lower.max_output_bound > tol


@pytest.mark.parametrize("family", FAMILIES)
def test_error_falls_with_degree_to_round_off(family):
    rng = np.random.default_rng(2)
    Q, K1, K2, V1, V2, _ = uniform_inputs(rng, (), 10, 9, 8, 4, 2, bound=0.6)
    O_ref, _ = dense_attention(Q, K1, K2, V1, V2)
    errors = [np.abs(ta.attention(Q, K1, K2, V1, V2, method="poly", degree=g, family=family) - O_ref).max()
              for g in range(0, 9)]
    assert errors[-1] < 1e-14
    assert all(later <= 10 * max(earlier, 1e-15) for earlier, later in zip(errors, errors[1:]))
    assert errors[0] > 1e3 * errors[-1]


def test_batched_matches_per_entry():
    rng = np.random.default_rng(3)
    Q, K1, K2, V1, V2, dO = uniform_inputs(rng, (2, 3), 5, 4, 6, 3, 2, bound=1.0)
    O, state = ta.attention_forward(Q, K1, K2, V1, V2, method="poly", degree=3)
    grads = ta.attention_backward(state, dO)
    for idx in np.ndindex(2, 3):
        O1, st1 = ta.attention_forward(Q[idx], K1[idx], K2[idx], V1[idx], V2[idx], method="poly", degree=3)
        np.testing.assert_allclose(O[idx], O1, rtol=1e-13, atol=1e-15)
        for g, g1 in zip(grads, ta.attention_backward(st1, dO[idx])):
            np.testing.assert_allclose(g[idx], g1, rtol=1e-12, atol=1e-14)


def test_chunking_does_not_change_results(monkeypatch):
    rng = np.random.default_rng(4)
    Q, K1, K2, V1, V2, dO = uniform_inputs(rng, (), 11, 9, 10, 3, 2, bound=1.0)
    O, state = ta.attention_forward(Q, K1, K2, V1, V2, method="poly", degree=4)
    grads = ta.attention_backward(state, dO)
    monkeypatch.setattr(config, "POLY_CHUNK_ROWS", 3)
    O3, state3 = ta.attention_forward(Q, K1, K2, V1, V2, method="poly", degree=4)
    assert state3.certificate.chunk_rows == 3
    np.testing.assert_allclose(O3, O, rtol=1e-13)
    for g3, g in zip(ta.attention_backward(state3, dO), grads):
        np.testing.assert_allclose(g3, g, rtol=1e-11, atol=1e-14)


def test_float32_follows_float64():
    """float32 in, float32 out; computed in float64 inside, so only the rounding differs."""
    rng = np.random.default_rng(5)
    args = uniform_inputs(rng, (), 8, 7, 6, 3, 2, bound=1.0, dtype=np.float32)
    O32, st32 = ta.attention_forward(*args[:5], method="poly", degree=4)
    O64, st64 = ta.attention_forward(*(a.astype(np.float64) for a in args[:5]), method="poly", degree=4)
    assert O32.dtype == np.float32
    np.testing.assert_allclose(O32, O64, rtol=2 * np.finfo(np.float32).eps, atol=1e-7)
    for g32, g64 in zip(ta.attention_backward(st32, args[5]), ta.attention_backward(st64, args[5].astype(np.float64))):
        assert g32.dtype == np.float32
        np.testing.assert_allclose(g32, g64, rtol=4 * np.finfo(np.float32).eps, atol=1e-6)


def test_per_row_radii_never_exceed_the_global_radius():
    rng = np.random.default_rng(6)
    Q, K1, K2, V1, V2, _ = uniform_inputs(rng, (), 200, 50, 50, 16, 2, bound=1.0)
    plan = ta.poly_plan(Q, K1, K2, V1, V2, degree=2)
    logits = np.einsum("il,jl,kl->ijk", Q, K1, K2) / 16
    assert np.all(np.abs(logits).max(axis=(1, 2)) <= plan.radius * (1 + 1e-12))
    assert plan.radius.max() <= plan.global_radius * (1 + 1e-12)
    assert np.median(plan.radius) < 0.8 * plan.global_radius


def test_constant_values_need_only_positive_weights():
    """When every pair carries the same value the output is exact in exact arithmetic for any
    positive weights: the degree only has to certify ε < 1, whatever the tolerance, and the
    bound is the rounding floor alone (not 0: numerator and normaliser round independently,
    the flaw behind the single-pair regression of tests/test_certificate_rounding.py)."""
    rng = np.random.default_rng(7)
    Q, K1, K2, _, _, _ = uniform_inputs(rng, (), 4, 5, 6, 3, 2, bound=1.0)
    V1, V2 = np.full((5, 2), 2.0), np.full((6, 2), -1.5)
    O, state = ta.attention_forward(Q, K1, K2, V1, V2, method="poly", tol=1e-12)
    plan = state.certificate
    assert plan.degree <= 2 and 0.0 < plan.max_output_bound <= 1e-12
    np.testing.assert_array_equal(plan.output_bound, plan.rounding_bound)
    assert np.all(np.abs(O + 3.0) <= plan.output_bound)


def test_zero_queries_are_exact():
    """A query row of zeros has all logits 0: radius 0, the polynomial is exact."""
    rng = np.random.default_rng(8)
    Q, K1, K2, V1, V2, _ = uniform_inputs(rng, (), 3, 4, 5, 2, 2, bound=1.0)
    Q[1] = 0.0
    O, state = ta.attention_forward(Q, K1, K2, V1, V2, method="poly", degree=1)
    assert state.certificate.radius[1] == 0.0 and state.certificate.epsilon[1] <= 1e-15
    np.testing.assert_allclose(O[1], dense_attention(Q, K1, K2, V1, V2)[0][1], rtol=1e-14)


# --- bad input -------------------------------------------------------------------------------

@pytest.fixture
def small(rng):
    return uniform_inputs(rng, (), 4, 3, 5, 2, 2, bound=1.0)[:5]


@pytest.mark.parametrize("options, error, match", [
    ({}, ValueError, "exactly one of tol"),
    ({"tol": 1e-3, "degree": 2}, ValueError, "exactly one of tol"),
    ({"tol": 0.0}, ValueError, "tol"),
    ({"tol": -1e-3}, ValueError, "tol"),
    ({"tol": float("nan")}, ValueError, "tol"),
    ({"tol": "small"}, TypeError, "tol"),
    ({"tol": 1e-300}, ValueError, "tol|unreachable"),
    ({"degree": -1}, ValueError, "degree"),
    ({"degree": 2.5}, TypeError, "degree"),
    ({"degree": 2, "family": "legendre"}, ValueError, "family"),
    ({"degree": 2, "memory_budget": 0}, ValueError, "memory_budget"),
    ({"degree": 12, "memory_budget": 10_000}, ValueError, r"degree 12 needs rank r = C\(d \+ g, g\) = 91"),
    ({"degree": 2, "bogus": 1}, TypeError, "bogus"),
])
def test_bad_options(small, options, error, match):
    with pytest.raises(error, match=match):
        ta.attention(*small, method="poly", **options)


def test_nan_rejected(small):
    small[1][0, 0] = np.nan
    with pytest.raises(ValueError, match="K1"):
        ta.attention(*small, method="poly", degree=2)


@pytest.mark.parametrize("family, degree", [("chebyshev", 3), ("taylor", 4), ("chebyshev", 6)])
def test_output_bound_is_nearly_attained_on_an_adversarial_row(family, degree):
    """A bound that could never fail is not a test: put half the softmax mass on the logit where
    the polynomial's relative error is largest (value +1) and half where it is most negative
    (value −1). The measured error must reach at least 1/10 of the certified bound (measured:
    1/6.3 Chebyshev g=3, 1/4.1 Taylor g=4, 1/5.1 Chebyshev g=6; the gap is κ = 2ε/(1 − ε)
    against a spread of η that is not quite 2ε, times the looseness of ε itself)."""
    R = 1.0
    plan = ta.poly_plan(np.ones((1, 1)), np.array([[R], [-R]]), np.ones((1, 1)), np.ones((2, 1)),
                        np.ones((1, 1)), scale=1.0, degree=degree, family=family)
    coefficients, radius = plan.coefficients[0], plan.radius[0]
    x = np.linspace(-R, R, 20001)
    eta = np.polynomial.polynomial.polyval(x / radius, coefficients) * np.exp(-x) - 1.0
    xa, xb = x[np.argmax(eta)], x[np.argmin(eta)]
    # equal softmax mass on both logits (up to rounding of the copy counts); one more key at −R
    # keeps the row's radius, hence its polynomial, while carrying under 1% of the mass
    copies_a = int(round(50 * np.exp(max(xb - xa, 0.0))))
    copies_b = int(round(50 * np.exp(max(xa - xb, 0.0))))
    K1 = np.array([[xa]] * copies_a + [[xb]] * copies_b + [[-R]])
    V1 = np.array([[1.0]] * copies_a + [[-1.0]] * copies_b + [[0.0]])
    args = (np.ones((1, 1)), K1, np.ones((1, 1)), V1, np.ones((1, 1)))
    O, state = ta.attention_forward(*args, scale=1.0, method="poly", degree=degree, family=family)
    error = np.abs(O - dense_attention(*args, 1.0)[0]).max()
    bound = state.certificate.max_output_bound
    assert error <= bound
    assert error >= bound / 10, (error, bound)


def test_saved_key_summaries_give_the_same_gradients():
    """attention_forward saves the wide key summaries for the backward when they fit a quarter
    of the memory budget; a tight budget recomputes them instead: same gradients."""
    rng = np.random.default_rng(14)
    Q, K1, K2, V1, V2, dO = uniform_inputs(rng, (2,), 9, 8, 7, 3, 2, bound=1.0)
    _, roomy = ta.attention_forward(Q, K1, K2, V1, V2, method="poly", degree=4)
    _, tight = ta.attention_forward(Q, K1, K2, V1, V2, method="poly", degree=4, memory_budget=40_000)
    assert roomy._saved is not None and tight._saved is None
    for a, b in zip(ta.attention_backward(roomy, dO), ta.attention_backward(tight, dO)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


def test_plan_gradient_bounds_hold_before_any_attention_is_computed():
    """poly_plan(..., dO=) certifies the gradients a priori (|δ̃| bounded without Õ); those
    bounds are looser than poly_gradient_bounds(state, dO) but must hold too."""
    rng = np.random.default_rng(15)
    Q, K1, K2, V1, V2, dO = uniform_inputs(rng, (2,), 7, 6, 8, 3, 2, bound=1.0)
    plan = ta.poly_plan(Q, K1, K2, V1, V2, degree=3, dO=dO)
    _, state = ta.attention_forward(Q, K1, K2, V1, V2, method="poly", degree=3)
    grads = ta.attention_backward(state, dO)
    after = ta.poly_gradient_bounds(state, dO)
    for g, ref, prior, post in zip(grads, dense_attention_grad(Q, K1, K2, V1, V2, dO), plan.gradient_bounds, after):
        assert prior.shape == g.shape
        assert np.all(prior >= post * (1 - 1e-12))
        assert np.all(np.abs(g - ref) <= prior + rounding_floor(ref))
    assert ta.poly_plan(Q, K1, K2, V1, V2, degree=3).gradient_bounds is None


def test_low_rank_identities_with_tensorly():
    """The algebra the surrogate relies on, checked densely with TensorLy's products at a tiny
    size: Ã = U1 (U2 ⊘ U3)^T reproduces each row's polynomial of the logits, and identity I1,
    (U2 ⊘ U3)^T (V1 ⊘ V2) = (U2^T V1) ∘ (U3^T V2), which is what lets the kernels never form
    the m1·m2 rows."""
    import tensorly as tl
    from tensorly.tenalg import khatri_rao

    from tattn_numba.poly.features import key_features, multi_index_table, query_features
    from tattn_numba.poly.plan import key_column_maxima

    rng = np.random.default_rng(16)
    Q, K1, K2, V1, V2, _ = uniform_inputs(rng, (), 4, 5, 3, 2, 2, bound=1.0)
    plan = ta.poly_plan(Q, K1, K2, V1, V2, degree=5, family="taylor")
    k1, k2 = key_column_maxima(K1[None])[0], key_column_maxima(K2[None])[0]
    table = multi_index_table(2, 5)
    U1 = query_features(0.5 * Q * k1 * k2 / plan.radius[:, None], plan.coefficients, table).T
    U2, U3 = key_features(K1 / k1, table).T, key_features(K2 / k2, table).T
    with tl.backend_context("numpy"):
        pairs = khatri_rao([U2, U3])  # (m1·m2, r): row pair(j1, j2) = U2[j1] ∘ U3[j2]
        A_tilde = U1 @ pairs.T
        lhs = pairs.T @ khatri_rao([V1, V2])
    logits = 0.5 * np.einsum("il,jl,kl->ijk", Q, K1, K2).reshape(4, -1)
    expected = np.stack([np.polynomial.polynomial.polyval(row / R, c)
                         for row, R, c in zip(logits, plan.radius, plan.coefficients)])
    np.testing.assert_allclose(A_tilde, expected, rtol=1e-13)
    np.testing.assert_allclose(lhs, (U2.T @ V1) * (U3.T @ V2), rtol=1e-13)
