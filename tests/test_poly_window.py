"""The polynomial surrogate with causal sliding windows (method="poly", window=(w1, w2), CPU).

Held to its certificates against a dense float64 reference written here (an explicit boolean
window mask over the full (n, m1, m2) tensor): the output within ``state.certificate.output_bound``
and every gradient within ``poly_gradient_bounds(state, dO)``; window (n, n) gives the causal
results; adversarial cases where the rounding certificate is weakest.
"""

from __future__ import annotations

import numpy as np
import pytest

import tattn_numba as ta
from tattn_numba import config
from tattn_numba._validation import check_attention_inputs
from tattn_numba.poly import plan as P
from tattn_numba.poly.rounding import backward_spans, forward_spans, touched_queries


# ----------------------------------------------------------------------------- the reference

def window_mask(n, w1, w2):
    """M[i, j1, j2]: i − w1 < j1 <= i and i − w2 < j2 <= i."""
    i = np.arange(n)[:, None, None]
    j1 = np.arange(n)[None, :, None]
    j2 = np.arange(n)[None, None, :]
    return (j1 <= i) & (j1 > i - w1) & (j2 <= i) & (j2 > i - w2)


def dense_head(q, k1, k2, v1, v2, dO, s, mask):
    """(O, dQ, dK1, dK2, dV1, dV2) of one head, float64, SPEC §1–2 over the full tensor."""
    Z = s * np.einsum("il,jl,kl->ijk", q, k1, k2)
    Z = np.where(mask, Z, -np.inf)
    Z = Z - Z.max(axis=(1, 2), keepdims=True)
    E = np.where(mask, np.exp(Z), 0.0)
    Pm = E / E.sum(axis=(1, 2), keepdims=True)
    O = np.einsum("ijk,jm,km->im", Pm, v1, v2)
    delta = np.einsum("im,im->i", dO, O)
    dS = np.einsum("im,jm,km->ijk", dO, v1, v2)
    dZ = Pm * (dS - delta[:, None, None])
    return (O, s * np.einsum("ijk,jl,kl->il", dZ, k1, k2), s * np.einsum("ijk,il,kl->jl", dZ, q, k2),
            s * np.einsum("ijk,il,jl->kl", dZ, q, k1), np.einsum("ijk,im,km->jm", Pm, dO, v2),
            np.einsum("ijk,im,jm->km", Pm, dO, v1))


def dense(Q, K1, K2, V1, V2, dO, window, scale=None):
    """Batched (..., H, n, ·) queries over (..., Hk, m, ·) keys, head h reading key head h // (H / Hk)."""
    Q, K1, K2, V1, V2, dO = (np.asarray(x, dtype=np.float64) for x in (Q, K1, K2, V1, V2, dO))
    n, d = Q.shape[-2:]
    s = 1.0 / d if scale is None else scale
    mask = window_mask(n, *window)
    H, Hk = Q.shape[-3], K1.shape[-3]
    O, dQ = np.zeros(dO.shape), np.zeros(Q.shape)
    dK1, dK2, dV1, dV2 = (np.zeros(x.shape) for x in (K1, K2, V1, V2))
    for b in np.ndindex(*Q.shape[:-3]):
        for h in range(H):
            hk = h // (H // Hk)
            o, dq, dk1, dk2, dv1, dv2 = dense_head(Q[b + (h,)], K1[b + (hk,)], K2[b + (hk,)], V1[b + (hk,)],
                                                   V2[b + (hk,)], dO[b + (h,)], s, mask)
            O[b + (h,)], dQ[b + (h,)] = o, dq
            for g, x in zip((dK1, dK2, dV1, dV2), (dk1, dk2, dv1, dv2)):
                g[b + (hk,)] += x
    return O, (dQ, dK1, dK2, dV1, dV2)


def inputs(rng, n, d, dv, bound, heads=((2, 4), (2, 2)), dtype=np.float64):
    (bq, hq), (bk, hk) = heads
    X = [rng.uniform(-bound, bound, (bq, hq, n, d)), rng.uniform(-bound, bound, (bk, hk, n, d)),
         rng.uniform(-bound, bound, (bk, hk, n, d)), rng.uniform(-bound, bound, (bk, hk, n, dv)),
         rng.uniform(-bound, bound, (bk, hk, n, dv)), rng.uniform(-1.0, 1.0, (bq, hq, n, dv))]
    return [x.astype(dtype) for x in X]


def floor(*arrays):
    """Round-off allowance on top of a certificate (the reference's own float64 rounding)."""
    return 1e-12 * max(float(np.abs(a).max()) for a in arrays) + 1e-300


def check(X, window, **options):
    """Run forward and backward and assert both certificates; returns (errors, bounds) maxima."""
    Q, K1, K2, V1, V2, dO = X
    O, state = ta.attention_forward(Q, K1, K2, V1, V2, method="poly", window=window, **options)
    O_ref, grads_ref = dense(*X, window=window, scale=options.get("scale"))
    plan = state.certificate
    assert np.all(np.abs(O.astype(np.float64) - O_ref) <= plan.output_bound + floor(O_ref)), window
    grads = ta.attention_backward(state, dO)
    bounds = ta.poly_gradient_bounds(state, dO)  # grouped heads: the key gradients summed over each group
    for name, g, ref, b in zip(ta.AttentionGrads._fields, grads, grads_ref, bounds):
        assert g.shape == ref.shape == b.shape, name
        error = np.abs(g.astype(np.float64) - ref)
        assert np.all(error <= b + floor(ref)), (name, window, float((error - b).max()))
    return O, grads, state


# ----------------------------------------------------------------------------- tests

N = 9


@pytest.mark.parametrize("heads", [((2, 3), (2, 3)), ((2, 4), (2, 2))], ids=["batch", "grouped"])
@pytest.mark.parametrize("window", [(1, 1), (1, N), (3, 2), (N, N), (N + 5, 2)])
@pytest.mark.parametrize("chunk", [4, 8192])
def test_windows_within_certificates_with_batch_and_grouped_heads(window, chunk, heads, monkeypatch):
    """Output within output_bound; gradients within poly_gradient_bounds (batch dims, one key
    head per query head, and grouped heads with their summed key gradients)."""
    monkeypatch.setattr(config, "POLY_CHUNK_ROWS", chunk)
    rng = np.random.default_rng(sum(window) + chunk)
    check(inputs(rng, N, 3, 2, bound=0.8, heads=heads), window, tol=1e-6)


@pytest.mark.parametrize("degree", [2, 3, 5])
def test_low_degrees_within_certificates(degree, monkeypatch):
    """Far from round-off: the polynomial's share of the certificate dominates."""
    monkeypatch.setattr(config, "POLY_CHUNK_ROWS", 3)
    rng = np.random.default_rng(degree)
    check(inputs(rng, 8, 2, 2, bound=1.0, heads=((1, 2), (1, 2))), (2, 3), degree=degree)


@pytest.mark.parametrize("chunk", [3, 8192])
def test_window_n_equals_causal(chunk, monkeypatch):
    monkeypatch.setattr(config, "POLY_CHUNK_ROWS", chunk)
    X = inputs(np.random.default_rng(7), N, 3, 2, bound=0.8, heads=((2, 3), (2, 3)))
    Ow, sw = ta.attention_forward(*X[:5], method="poly", degree=6, window=(N, N))
    Oc, sc = ta.attention_forward(*X[:5], method="poly", degree=6, causal=True)
    np.testing.assert_array_equal(Ow, Oc)
    for gw, gc in zip(ta.attention_backward(sw, X[5]), ta.attention_backward(sc, X[5])):
        np.testing.assert_array_equal(gw, gc)
    np.testing.assert_array_equal(sw.certificate.output_bound, sc.certificate.output_bound)
    for bw, bc in zip(ta.poly_gradient_bounds(sw, X[5]), ta.poly_gradient_bounds(sc, X[5])):
        np.testing.assert_array_equal(bw, bc)


def test_window_one_sees_only_the_diagonal_pair():
    """w = (1, 1): row i sees (i, i) only, so Õ_i = V1_i ∘ V2_i up to round-off at any degree."""
    X = inputs(np.random.default_rng(3), N, 3, 2, bound=0.8, heads=((1, 1), (1, 1)))
    O, _ = ta.attention_forward(*X[:5], method="poly", degree=1, window=(1, 1))
    np.testing.assert_allclose(O, X[3] * X[4], rtol=1e-12, atol=1e-15)


def test_logits_at_the_radius_edge(monkeypatch):
    """Queries and keys aligned so that the logits reach the certified radius (the weakest
    point of the polynomial and of the rounding bound, ~e^{2R})."""
    monkeypatch.setattr(config, "POLY_CHUNK_ROWS", 5)
    rng = np.random.default_rng(11)
    n, d = 12, 2
    Q, K1, K2, V1, V2, dO = inputs(rng, n, d, 2, bound=1.0, heads=((1, 2), (1, 2)))
    Q[:] = np.sign(Q) * 2.0
    K1[:] = 1.5
    K2[...] = np.where(rng.random(K2.shape) < 0.5, -1.5, 1.5)
    _, _, state = check([Q, K1, K2, V1, V2, dO], (4, 3), degree=14)
    assert float(state.certificate.radius.max()) > 4.0


def test_near_constant_values(monkeypatch):
    monkeypatch.setattr(config, "POLY_CHUNK_ROWS", 4)
    X = inputs(np.random.default_rng(5), 10, 3, 2, bound=1.0, heads=((2, 2), (2, 2)))
    X[3] = 1.0 + 1e-9 * X[3]
    X[4] = -2.0 + 1e-9 * X[4]
    check(X, (3, 5), degree=3)


def test_float32(monkeypatch):
    monkeypatch.setattr(config, "POLY_CHUNK_ROWS", 4)
    X = inputs(np.random.default_rng(6), N, 3, 2, bound=0.8, heads=((2, 2), (2, 2)), dtype=np.float32)
    O, grads, _ = check(X, (3, 2), degree=6)
    assert O.dtype == np.float32 and all(g.dtype == np.float32 for g in grads)


def test_long_sequence_small_window(monkeypatch):
    """n = 300, w = (3, 5), chunks of 64: running sums over many rows with subtractions. The
    certificate must hold and must not grow along the sequence (each chunk restarts)."""
    monkeypatch.setattr(config, "POLY_CHUNK_ROWS", 64)
    rng = np.random.default_rng(12)
    n = 300
    X = inputs(rng, n, 2, 2, bound=1.2, heads=((1, 1), (1, 1)))
    Q, K1, K2, V1, V2, dO = X
    O, state = ta.attention_forward(Q, K1, K2, V1, V2, method="poly", degree=8, window=(3, 5))
    mask = window_mask(n, 3, 5)
    O_ref, *grads_ref = dense_head(Q[0, 0], K1[0, 0], K2[0, 0], V1[0, 0], V2[0, 0], dO[0, 0], 0.5, mask)
    assert np.all(np.abs(O[0, 0] - O_ref) <= state.certificate.output_bound[0, 0] + floor(O_ref))
    for g, ref, b in zip(ta.attention_backward(state, dO), grads_ref, ta.poly_gradient_bounds(state, dO)):
        assert np.all(np.abs(g[0, 0] - ref) <= b[0, 0] + floor(ref))
    # rounding stays local: the last chunk's rounding bound is no larger than the first's
    rounding = state.certificate.rounding_bound[0, 0]
    assert rounding[-64:].max() <= 4.0 * rounding[:64].max()


def test_spans_are_local_for_windows():
    """The rounding spans count the chunk and the window, not the prefix; plain causal unchanged."""
    n, chunk = 300, 64
    mask = ta.Mask(window=(3, 5))
    f1, f2 = forward_spans(mask, n, n, n, chunk)
    b1, b2 = backward_spans(mask, n, n, n, chunk)
    assert f1.max() <= 3 * 3 - 2 and f2.max() <= 3 * 5 - 2
    assert b1.max() <= 3 * 3 - 2 and b2.max() <= 3 * 5 - 2
    c1, c2 = mask.pair_counts(n, n, n)
    assert np.all(f1 >= c1) and np.all(f2 >= c2) and np.all(b1 >= c1) and np.all(b2 >= c2)
    causal = ta.Mask(causal=True)
    np.testing.assert_array_equal(forward_spans(causal, n, n, n, chunk)[0], np.arange(1, n + 1))
    (s1, t1, a1), _ = touched_queries(mask, n, n, n, chunk)
    assert np.all(s1 == np.arange(n)) and np.all(a1 <= t1) and np.all(t1 - s1 <= chunk + 3)


def test_memory_estimate_counts_the_window():
    X = inputs(np.random.default_rng(0), 64, 3, 2, bound=0.5, heads=((1, 1), (1, 1)))
    small = check_attention_inputs(*X[:5], None, False, window=(2, 2))
    wide = check_attention_inputs(*X[:5], None, False, window=(40, 40))
    shape_small = P._estimate_shape(small, 3, 1 << 40)
    shape_wide = P._estimate_shape(wide, 3, 1 << 40)
    assert shape_small["window"] == 2 and shape_wide["window"] == 40
    r = P.rank(3, 3)
    assert P.memory_estimate(r, 3, 2, 8, **shape_wide) > P.memory_estimate(r, 3, 2, 8, **shape_small)
