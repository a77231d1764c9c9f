"""n-way attention of order t = 1 is ordinary softmax attention.

``nway_attention(Q, (K,), (V,))`` against softmax(s·QKᵀ)·V written here with NumPy: the exact
method agrees to 1e-12 and the certified surrogate stays within ``nway_poly_plan``'s
``output_bound`` entrywise, on benign inputs, logits at the certified radius, a single key,
near-constant values, float32 and causal masks.
"""

from __future__ import annotations

import numpy as np
import pytest

import tattn_numba as ta

EXACT_ATOL = 1e-12
#: The NumPy reference's own float64 rounding, in units of max |V| (the certificate bounds the
#: distance to the true result, the reference is within a few ulps of it).
REFERENCE_ROUNDING = 64 * np.finfo(np.float64).eps


def softmax_attention(Q, K, V, scale, causal=False):
    """softmax(scale·Q·Kᵀ)·V in float64, rows shifted by their maximum; ``causal`` keeps j <= i."""
    Q, K, V = (np.asarray(x, dtype=np.float64) for x in (Q, K, V))
    logits = scale * (Q @ K.T)
    if causal:
        logits = np.where(np.tril(np.ones(logits.shape, dtype=bool)), logits, -np.inf)
    weights = np.exp(logits - logits.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)
    return weights @ V


def _uniform(rng, n, m, d, dv, bound=1.0, dtype=np.float64):
    return (rng.uniform(-bound, bound, (n, d)).astype(dtype), rng.uniform(-bound, bound, (m, d)).astype(dtype),
            rng.uniform(-bound, bound, (m, dv)).astype(dtype))


def _check(Q, K, V, *, scale=None, causal=False, **poly):
    """Exact within 1e-12 (plus the cast for float32) and the surrogate within its certificate."""
    s = 1.0 / Q.shape[-1] if scale is None else scale
    reference = softmax_attention(Q, K, V, s, causal)
    exact = ta.nway_attention(Q, (K,), (V,), scale=scale, causal=causal)
    assert exact.dtype == Q.dtype and exact.shape == reference.shape
    cast = np.finfo(Q.dtype).eps / 2 * np.abs(reference) if Q.dtype == np.float32 else 0.0
    assert np.all(np.abs(exact - reference) <= EXACT_ATOL + cast)
    plan = ta.nway_poly_plan(Q, (K,), (V,), scale=scale, causal=causal, **poly)
    approx = ta.nway_attention(Q, (K,), (V,), scale=scale, causal=causal, method="poly", **poly)
    slack = REFERENCE_ROUNDING * max(1.0, float(np.abs(V).max()))
    assert np.all(np.abs(approx - reference) <= plan.output_bound + slack)
    return plan


@pytest.mark.parametrize("options", [{"tol": 1e-6}, {"tol": 1e-3}, {"degree": 2}, {"degree": 8},
                                     {"tol": 1e-6, "family": "taylor"}])
def test_benign_inputs(rng, options):
    Q, K, V = _uniform(rng, 50, 70, 8, 5)
    plan = _check(Q, K, V, **options)
    if "tol" in options:
        assert plan.max_output_bound <= options["tol"]


@pytest.mark.parametrize("scale", [0.05, 0.5, 2.0])
def test_explicit_scale(rng, scale):
    Q, K, V = _uniform(rng, 31, 17, 4, 3)
    _check(Q, K, V, scale=scale, tol=1e-5)


def test_causal_is_the_masked_softmax(rng):
    Q, K, V = _uniform(rng, 40, 40, 6, 4)
    _check(Q, K, V, causal=True, tol=1e-7)


def test_logits_at_the_radius_edge():
    """Every key is ±B·sign(Q_i) for some query row i, so each row's extreme logits are exactly
    ±R_i (the per-row radius the certificate uses); at a low degree the error is largest there."""
    d, B = 4, 1.5
    signs = np.array([[1, -1, 1, 1], [-1, -1, 1, -1], [1, 1, 1, 1]], dtype=np.float64)
    Q = B * signs
    K = np.concatenate([B * signs, -B * signs, np.zeros((1, d))])
    V = np.linspace(-1.0, 1.0, K.shape[0] * 2).reshape(-1, 2)
    logits = (Q @ K.T) / d
    assert np.allclose(np.abs(logits).max(axis=1), B * B)
    for degree in (5, 6, 9):
        plan = _check(Q, K, V, degree=degree)
        assert plan.radius.max() >= B * B


def test_single_key_returns_its_value(rng):
    Q = rng.uniform(-1, 1, (9, 3))
    K, V = rng.uniform(-1, 1, (1, 3)), rng.uniform(-1, 1, (1, 4))
    assert np.array_equal(ta.nway_attention(Q, (K,), (V,)), np.repeat(V, 9, axis=0))
    _check(Q, K, V, tol=1e-9)


def test_near_constant_values_give_a_tiny_bound(rng):
    Q, K, _ = _uniform(rng, 25, 33, 4, 3)
    V = 1.0 + 1e-9 * rng.uniform(-1, 1, (33, 3))
    plan = _check(Q, K, V, degree=3)
    assert plan.max_output_bound < 1e-8


def test_float32(rng):
    Q, K, V = _uniform(rng, 40, 60, 8, 6, dtype=np.float32)
    for options in ({"tol": 1e-3}, {"degree": 6}):
        plan = _check(Q, K, V, **options)
        assert plan.output_bound.dtype == np.float64


def test_large_logits_exact_and_no_certificate(rng):
    """Logits up to ±400: the exact method still matches the shifted softmax; the surrogate has no
    certificate at that radius and refuses instead of returning an uncertified result."""
    Q, K, V = _uniform(rng, 12, 20, 4, 3)
    scale = 100.0
    exact = ta.nway_attention(Q, (K,), (V,), scale=scale)
    assert np.all(np.abs(exact - softmax_attention(Q, K, V, scale)) <= EXACT_ATOL)
    with pytest.raises(ValueError, match="tol"):
        ta.nway_attention(Q, (K,), (V,), scale=scale, method="poly", tol=1e-6)
    with pytest.raises(ValueError, match="degree"):
        ta.nway_attention(Q, (K,), (V,), scale=scale, method="poly", degree=10)


def test_batch_dimensions_match_a_loop(rng):
    Q = rng.uniform(-1, 1, (2, 3, 10, 4))
    K = rng.uniform(-1, 1, (2, 3, 12, 4))
    V = rng.uniform(-1, 1, (2, 3, 12, 5))
    exact = ta.nway_attention(Q, (K,), (V,))
    approx = ta.nway_attention(Q, (K,), (V,), method="poly", tol=1e-6)
    plan = ta.nway_poly_plan(Q, (K,), (V,), tol=1e-6)
    for b in np.ndindex(2, 3):
        reference = softmax_attention(Q[b], K[b], V[b], 0.25)
        assert np.all(np.abs(exact[b] - reference) <= EXACT_ATOL)
        assert np.all(np.abs(approx[b] - reference) <= plan.output_bound[b] + REFERENCE_ROUNDING)
