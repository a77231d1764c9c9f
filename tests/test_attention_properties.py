"""Hypothesis property tests for exact tensor attention.

Shapes (n, m1, m2, d, dv in 1..8, 0-2 leading dims), dtypes, scales, entry magnitudes (1e-3 to 30)
and structure (integers with tied logits, sparse rows, repeated rows, ...) are drawn by hypothesis;
the arrays themselves come from a seeded NumPy generator (cheap to draw, reproducible from the
seed hypothesis prints). Select the number of examples with ``HYPOTHESIS_PROFILE`` (conftest.py).

Each property can fail: against the dense reference (tests/reference.py) with the tolerance
rules documented there and in test_attention_exact.py, or against an exactly known transformation
of the implementation's own output.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tattn_numba as ta
from tattn_numba import config
from reference import (
    ABS_FLOOR,
    EPS32,
    FLOOR_REL,
    RTOL64,
    assert_forward_matches,
    assert_grads_match,
    causal_mask,
    central_difference_directional,
    dense_attention,
    dense_logits,
    dense_magnitudes,
)

pytestmark = pytest.mark.usefixtures("warm_kernels")

STRUCTURES = ("normal", "uniform", "integers", "sparse", "repeated", "positive")


@dataclass
class Problem:
    Q: np.ndarray
    K1: np.ndarray
    K2: np.ndarray
    V1: np.ndarray
    V2: np.ndarray
    dO: np.ndarray
    scale: float | None
    causal: bool

    @property
    def X(self):
        return [self.Q, self.K1, self.K2, self.V1, self.V2]

    @property
    def dtype(self):
        return self.Q.dtype

    @property
    def s(self) -> float:
        return 1.0 / self.Q.shape[-1] if self.scale is None else self.scale


def _array(rng, shape, structure, magnitude):
    if structure == "normal":
        a = rng.standard_normal(shape)
    elif structure == "uniform":
        a = rng.uniform(-1.0, 1.0, shape)
    elif structure == "integers":  # many exactly tied logits
        a = rng.integers(-2, 3, shape).astype(np.float64)
    elif structure == "sparse":  # many zeros, often whole zero rows
        a = rng.standard_normal(shape) * (rng.random(shape) < 0.3)
    elif structure == "repeated":  # rows drawn from a pool of two
        pool = rng.standard_normal(shape[:-2] + (2, shape[-1]))
        a = pool[..., rng.integers(0, 2, shape[-2]), :]
    else:
        a = np.abs(rng.standard_normal(shape))
    return magnitude * a


@st.composite
def problems(draw, causal=None, dtypes=(np.float32, np.float64), max_magnitude=30.0, max_size=8):
    batch = tuple(draw(st.lists(st.integers(1, 3), min_size=0, max_size=2)))
    causal = draw(st.booleans()) if causal is None else causal
    n = draw(st.integers(1, max_size))
    m1, m2 = (n, n) if causal else (draw(st.integers(1, max_size)), draw(st.integers(1, max_size)))
    d = draw(st.integers(1, 8))
    dv = draw(st.integers(1, 8))
    dtype = draw(st.sampled_from(dtypes))
    scale_kind = draw(st.sampled_from(["default", "rsqrt", "custom"]))
    scale = {"default": None, "rsqrt": 1.0 / np.sqrt(d), "custom": draw(st.floats(0.05, 4.0))}[scale_kind]
    # entry magnitude of Q, K1, K2 (log-uniform in [1e-3, max_magnitude]) and of V1, V2
    qk_mag = 10.0 ** draw(st.floats(-3.0, np.log10(max_magnitude)))
    v_mag = 10.0 ** draw(st.floats(-3.0, np.log10(30.0)))
    structure = draw(st.sampled_from(STRUCTURES))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    shapes = [(n, d), (m1, d), (m2, d), (m1, dv), (m2, dv)]
    mags = [qk_mag, qk_mag, qk_mag, v_mag, v_mag]
    X = [_array(rng, batch + s, structure, mg).astype(dtype) for s, mg in zip(shapes, mags)]
    dO = rng.standard_normal(batch + (n, dv)).astype(dtype)
    return Problem(*X, dO, scale, causal)


def _sums(p) -> int:
    """The longest float32 sums of the exact CPU path for ``p``: its tiles contract over at most m2
    rows of K2 and fold over at most m1 rows of K1 in float32 (the test sizes are below the tiles)."""
    return p.K1.shape[-2] + p.K2.shape[-2]


def _tight(a, b, mag, dtype, logit=0.0, ulps32=2.0, sums=0):
    """|a - b| <= tolerance for two results that should agree up to reordered sums and logits
    rounded differently: RTOL64·(1 + L)·mag in float64, plus max(ulps32, sums)·eps32·(1 + L)·mag in
    float32 (float32 logits are rounded at ~eps32·L, L = ``logit`` the largest sum of absolute logit
    terms; two orders of float32 sums of c1 and c2 terms differ by up to 2·(γ_c1 + γ_c2) ≈
    (c1 + c2)·eps32 of their magnitude, ``sums`` = c1 + c2: 2 eps32 was broken by 2.4 eps32 on
    permuted keys in CI, 2026-12-03)."""
    mag = np.asarray(mag, dtype=np.float64)
    tol = RTOL64 * (1.0 + logit) * mag + FLOOR_REL * (float(mag.max()) if mag.size else 0.0) + ABS_FLOOR
    if dtype == np.float32:
        tol = tol + max(ulps32, sums) * EPS32 * (1.0 + logit) * mag
    err = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    assert np.all(err <= tol), f"max err/tol = {np.max(err / np.maximum(tol, 1e-300)):.3g}"


# ---------------------------------------------------------------------------- against reference


@given(p=problems())
def test_forward_matches_reference(impl, p):
    O, state = ta.attention_forward(*p.X, scale=p.scale, causal=p.causal, **impl)
    assert O.dtype == p.dtype and O.shape == p.dO.shape
    assert_forward_matches(O, state.lse, *p.X, scale=p.scale, causal=p.causal)


@given(p=problems())
def test_gradients_match_reference(impl, p):
    grads = ta.attention_grad(*p.X, p.dO, scale=p.scale, causal=p.causal, **impl)
    assert_grads_match(grads, *p.X, p.dO, scale=p.scale, causal=p.causal)


@given(p=problems())
def test_rows_are_convex_combinations(impl, p):
    """O[i, m] lies between the min and max over *allowed* pairs of V1[j1, m]·V2[j2, m]."""
    O = ta.attention(*p.X, scale=p.scale, causal=p.causal, **impl).astype(np.float64)
    W = np.einsum("...jm,...km->...jkm", p.V1.astype(np.float64), p.V2.astype(np.float64))
    W = np.broadcast_to(W[..., None, :, :, :], O.shape[:-1] + W.shape[-3:])  # (..., n, m1, m2, dv)
    if p.causal:
        n = O.shape[-2]
        allowed = causal_mask(n, n, n)[..., None]
        lo = np.where(allowed, W, np.inf).min(axis=(-3, -2))
        hi = np.where(allowed, W, -np.inf).max(axis=(-3, -2))
    else:
        lo = W.min(axis=(-3, -2))
        hi = W.max(axis=(-3, -2))
    wmax = np.maximum(np.abs(lo), np.abs(hi))
    # float32 inputs are contracted in float32 (tiles of config.KEY_TILE_2 key rows): a sum of c
    # weighted products moves by at most γ_{c+2} ≈ (c + 2)·u of its magnitude (u = EPS32 / 2);
    # one EPS32, the former slack, was broken by 1.3·EPS32 on a hypothesis draw (CI, 2026-12-03)
    f32 = (config.KEY_TILE_2 + 2) * EPS32 / 2 if p.dtype == np.float32 else 0.0
    slack = (1e-13 + f32) * wmax
    assert np.all(O >= lo - slack), np.min(O - lo + slack)
    assert np.all(O <= hi + slack), np.max(O - hi - slack)


@given(p=problems())
def test_lse_between_max_logit_and_max_plus_log_count(impl, p):
    _, state = ta.attention_forward(*p.X, scale=p.scale, causal=p.causal, **impl)
    S = dense_logits(p.Q, p.K1, p.K2, p.scale)
    n, m1, m2 = S.shape[-3:]
    if p.causal:
        S = np.where(causal_mask(n, m1, m2), S, -np.inf)
        count = (np.arange(n) + 1.0) ** 2
    else:
        count = np.full(n, float(m1 * m2))
    smax = S.max(axis=(-2, -1))
    # float32 inputs: the logits are computed in float32, rounded at ~eps32 of their term sums
    rel = 4 * EPS32 if p.dtype == np.float32 else 1e-12
    slack = rel * (1.0 + dense_magnitudes(*p.X, scale=p.scale, causal=p.causal)["logit"] + np.abs(smax))
    assert np.all(state.lse >= smax - slack)
    assert np.all(state.lse <= smax + np.log(count) + slack)


# --------------------------------------------------------------------- exact transformations


@given(p=problems(causal=False), data=st.data())
def test_permuting_queries_permutes_outputs(impl, p, data):
    n = p.Q.shape[-2]
    perm = np.array(data.draw(st.permutations(range(n))))
    O = ta.attention(*p.X, scale=p.scale, **impl)
    Op = ta.attention(p.Q[..., perm, :], *p.X[1:], scale=p.scale, **impl)
    mag = dense_magnitudes(*p.X, scale=p.scale)
    _tight(Op, O[..., perm, :], mag["O"][..., perm, :], p.dtype, logit=mag["logit"], sums=_sums(p))


@given(p=problems(causal=False), data=st.data(), which=st.sampled_from([1, 2]))
def test_permuting_keys_with_values_leaves_output_unchanged(impl, p, data, which):
    """Permuting rows of (K1, V1) together (or of (K2, V2)) only reorders the pairs: O and dQ are
    unchanged, and the gradients of the permuted operands are permuted the same way."""
    m = p.X[which].shape[-2]
    perm = np.array(data.draw(st.permutations(range(m))))
    Y = list(p.X)
    Y[which] = Y[which][..., perm, :]
    Y[which + 2] = Y[which + 2][..., perm, :]
    O, st0 = ta.attention_forward(*p.X, scale=p.scale, **impl)
    Op, st1 = ta.attention_forward(*Y, scale=p.scale, **impl)
    mag = dense_magnitudes(*p.X, p.dO, scale=p.scale)
    logit = mag["logit"]
    _tight(Op, O, mag["O"], p.dtype, logit=logit, sums=_sums(p))
    g = ta.attention_backward(st0, p.dO)
    gp = ta.attention_backward(st1, p.dO)
    if p.dtype == np.float32:
        # float32 gradients inherit O's rounding through δ = rowsum(dO∘O), relative to O and not to
        # the gradient entry: where O cancels (O = -3e-4 from terms of size 2) two orders differ by
        # 25× an 8-ulp tolerance (thorough profile). Both runs are held to the contract instead.
        assert_grads_match(gp, *Y, p.dO, scale=p.scale)
        assert_grads_match(g, *p.X, p.dO, scale=p.scale)
        return
    for k, name in enumerate(("dQ", "dK1", "dK2", "dV1", "dV2")):
        expect, m_ = g[k], mag[name]
        if k in (which, which + 2):
            expect, m_ = expect[..., perm, :], m_[..., perm, :]
        _tight(gp[k], expect, m_, p.dtype, logit=logit, sums=_sums(p))


@given(p=problems())
def test_swapping_key_value_pairs(impl, p):
    """(K1, V1) <-> (K2, V2) leaves O unchanged (logits and V1∘V2 are symmetric)."""
    O = ta.attention(*p.X, scale=p.scale, causal=p.causal, **impl)
    Os = ta.attention(p.Q, p.K2, p.K1, p.V2, p.V1, scale=p.scale, causal=p.causal, **impl)
    mag = dense_magnitudes(*p.X, scale=p.scale, causal=p.causal)
    _tight(Os, O, mag["O"], p.dtype, logit=mag["logit"], sums=_sums(p))


@given(p=problems(), data=st.data())
def test_feature_rescaling_is_invisible(impl, p, data):
    """Q[:, l]·2^k and K1[:, l]·2^-k leave every logit unchanged: same O, dQ scaled by 2^-k and dK1
    by 2^k (powers of two keep every product exact)."""
    d = p.Q.shape[-1]
    k = np.array(data.draw(st.lists(st.integers(-3, 3), min_size=d, max_size=d)), dtype=np.float64)
    D = (2.0**k).astype(p.dtype)
    Dinv = (2.0 ** (-k)).astype(p.dtype)
    Y = [p.Q * D, p.K1 * Dinv, p.K2, p.V1, p.V2]
    g = ta.attention_grad(*p.X, p.dO, scale=p.scale, causal=p.causal, **impl)
    gy = ta.attention_grad(*Y, p.dO, scale=p.scale, causal=p.causal, **impl)
    O = ta.attention(*p.X, scale=p.scale, causal=p.causal, **impl)
    Oy = ta.attention(*Y, scale=p.scale, causal=p.causal, **impl)
    mag = dense_magnitudes(*p.X, p.dO, scale=p.scale, causal=p.causal)
    logit = mag["logit"]
    _tight(Oy, O, mag["O"], p.dtype, logit=logit, sums=_sums(p))
    _tight(gy.dQ * D, g.dQ, mag["dQ"], p.dtype, logit=logit, ulps32=8.0, sums=_sums(p))
    _tight(gy.dK1 * Dinv, g.dK1, mag["dK1"], p.dtype, logit=logit, ulps32=8.0, sums=_sums(p))
    for name in ("dK2", "dV1", "dV2"):
        _tight(getattr(gy, name), getattr(g, name), mag[name], p.dtype, logit=logit, ulps32=8.0, sums=_sums(p))


@given(p=problems(dtypes=(np.float64,), max_magnitude=3.0), data=st.data())
def test_row_constant_logit_shift(impl, p, data):
    """An extra feature with Q[i, d] = c_i and K1[:, d] = K2[:, d] = 1 adds s·c_i to row i's logits:
    softmax ignores it (same O) and lse moves by exactly s·c_i."""
    batch_n = p.Q.shape[:-1]
    c = np.array(data.draw(st.lists(st.floats(-1e3, 1e3), min_size=batch_n[-1], max_size=batch_n[-1])))
    c = np.broadcast_to(c, batch_n)
    s = p.s
    Qa = np.concatenate([p.Q, c[..., None]], axis=-1)
    K1a = np.concatenate([p.K1, np.ones(p.K1.shape[:-1] + (1,))], axis=-1)
    K2a = np.concatenate([p.K2, np.ones(p.K2.shape[:-1] + (1,))], axis=-1)
    O, st0 = ta.attention_forward(*p.X, scale=s, causal=p.causal, **impl)
    Oa, st1 = ta.attention_forward(Qa, K1a, K2a, p.V1, p.V2, scale=s, causal=p.causal, **impl)
    mag = dense_magnitudes(*p.X, scale=s, causal=p.causal)
    shift = s * np.abs(c).max()
    # rounding s·c_i + logit costs |shift|·eps absolutely, a relative error of P
    _tight(Oa, O, mag["O"], p.dtype, logit=mag["logit"] + shift, sums=_sums(p))
    np.testing.assert_allclose(st1.lse, st0.lse + s * c, rtol=0, atol=RTOL64 * (1 + mag["logit"] + shift + np.abs(st0.lse).max()))


@given(p=problems(dtypes=(np.float64,)), data=st.data())
def test_output_is_linear_in_each_value_matrix(impl, p, data):
    which = data.draw(st.sampled_from([3, 4]))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    extra = rng.standard_normal(p.X[which].shape)
    a = data.draw(st.floats(-3.0, 3.0))
    Y = list(p.X)
    Y[which] = p.X[which] + a * extra
    Z = list(p.X)
    Z[which] = extra
    kw = dict(scale=p.scale, causal=p.causal, **impl)
    lhs = ta.attention(*Y, **kw)
    rhs = ta.attention(*p.X, **kw) + a * ta.attention(*Z, **kw)
    mag = dense_magnitudes(*p.X, scale=p.scale, causal=p.causal)["O"] + abs(a) * dense_magnitudes(
        *Z, scale=p.scale, causal=p.causal
    )["O"]
    _tight(lhs, rhs, mag, p.dtype, logit=dense_magnitudes(*p.X, scale=p.scale)["logit"], sums=_sums(p))


@given(p=problems(), data=st.data())
def test_gradients_are_linear_in_upstream_gradient(impl, p, data):
    """For a fixed forward state the backward is linear in dO (P does not depend on dO)."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    dO2 = rng.standard_normal(p.dO.shape).astype(p.dtype)
    _, state = ta.attention_forward(*p.X, scale=p.scale, causal=p.causal, **impl)
    g1 = ta.attention_backward(state, p.dO)
    g2 = ta.attention_backward(state, dO2)
    g12 = ta.attention_backward(state, (p.dO + dO2).astype(p.dtype))
    m1 = dense_magnitudes(*p.X, p.dO, scale=p.scale, causal=p.causal)
    m2 = dense_magnitudes(*p.X, dO2, scale=p.scale, causal=p.causal)
    logit = m1["logit"]
    for k, name in enumerate(("dQ", "dK1", "dK2", "dV1", "dV2")):
        _tight(g12[k], g1[k].astype(np.float64) + g2[k], m1[name] + m2[name], p.dtype, logit=logit, ulps32=8.0,
               sums=_sums(p))


@given(p=problems(dtypes=(np.float64,)))
def test_euler_identities(impl, p):
    """Scaling Q, K1 or K2 by c scales every logit by c, so <dQ,Q> = <dK1,K1> = <dK2,K2>; O is linear
    in V1 and in V2, so <dV1,V1> = <dV2,V2> = <dO,O>. Independent of the reference."""
    O, state = ta.attention_forward(*p.X, scale=p.scale, causal=p.causal, **impl)
    g = ta.attention_backward(state, p.dO)
    mag = dense_magnitudes(*p.X, p.dO, scale=p.scale, causal=p.causal)
    logit = mag["logit"]
    rel = RTOL64 * (1 + logit)
    terms = [(g.dQ, p.Q, "dQ"), (g.dK1, p.K1, "dK1"), (g.dK2, p.K2, "dK2")]
    vals = [np.sum(a * b, axis=(-2, -1)) for a, b, _ in terms]
    size = sum(np.sum(mag[name] * np.abs(b), axis=(-2, -1)) for _, b, name in terms)
    assert np.all(np.abs(vals[0] - vals[1]) <= rel * size + 1e-300), (vals, size)
    assert np.all(np.abs(vals[0] - vals[2]) <= rel * size + 1e-300), (vals, size)
    v1 = np.sum(g.dV1 * p.V1, axis=(-2, -1))
    v2 = np.sum(g.dV2 * p.V2, axis=(-2, -1))
    v0 = np.sum(p.dO * O, axis=(-2, -1))
    size = np.sum(np.abs(p.dO) * mag["O"], axis=(-2, -1))
    assert np.all(np.abs(v1 - v0) <= rel * size + 1e-300), (v1, v0)
    assert np.all(np.abs(v2 - v0) <= rel * size + 1e-300), (v2, v0)


@given(p=problems(dtypes=(np.float64,), max_magnitude=2.0, max_size=5), data=st.data())
def test_directional_derivative_matches_finite_difference(impl, p, data):
    """d/dt <G, attention(X + t·E)> at t = 0 equals Σ_k <grad_k, E_k> for a random direction E."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    # Each direction is scaled like its operand, so that h·E is a small *relative* perturbation
    # (an O(1) direction on 1e-3-sized values makes the stencil's truncation error dominate).
    E = [rng.standard_normal(x.shape) * max(float(np.abs(x).max()), 1e-3) for x in p.X]
    sizes = [x.size for x in p.X]
    flat = np.concatenate([x.ravel() for x in p.X])
    dirn = np.concatenate([e.ravel() for e in E])
    kw = dict(scale=p.scale, causal=p.causal, **impl)

    def unflatten(v):
        out, start = [], 0
        for x, sz in zip(p.X, sizes):
            out.append(v[start : start + sz].reshape(x.shape))
            start += sz
        return out

    def loss(v):
        return np.sum(ta.attention(*unflatten(v), **kw) * p.dO)

    L = dense_magnitudes(*p.X, scale=p.scale)["logit"]
    h = 1e-3 / (1.0 + L)
    fd = central_difference_directional(loss, flat, dirn, h=h)
    g = ta.attention_grad(*p.X, p.dO, **kw)
    analytic = sum(np.sum(gk * e) for gk, e in zip(g, E))
    size = sum(np.sum(np.abs(gk * e)) for gk, e in zip(g, E)) + np.sum(np.abs(p.dO * ta.attention(*p.X, **kw)))
    assert abs(fd - analytic) <= 1e-7 * size + 1e-12, (fd, analytic, size)


@given(p=problems())
def test_batch_entries_are_independent(impl, p):
    """A batched call equals a loop of unbatched calls, for O and all gradients."""
    batch = p.Q.shape[:-2]
    O = ta.attention(*p.X, scale=p.scale, causal=p.causal, **impl)
    g = ta.attention_grad(*p.X, p.dO, scale=p.scale, causal=p.causal, **impl)
    for b in list(np.ndindex(*batch))[:4]:
        Xb = [x[b] for x in p.X]
        Ob = ta.attention(*Xb, scale=p.scale, causal=p.causal, **impl)
        mag = dense_magnitudes(*Xb, p.dO[b], scale=p.scale, causal=p.causal)
        logit = mag["logit"]
        _tight(O[b], Ob, mag["O"], p.dtype, logit=logit, sums=_sums(p))
        gb = ta.attention_grad(*Xb, p.dO[b], scale=p.scale, causal=p.causal, **impl)
        for k, name in enumerate(("dQ", "dK1", "dK2", "dV1", "dV2")):
            _tight(g[k][b], gb[k], mag[name], p.dtype, logit=logit, ulps32=8.0, sums=_sums(p))


@given(p=problems(causal=True), data=st.data())
def test_causal_row_equals_prefix_problem(impl, p, data):
    """Causal row i is the non-causal problem of query i against the key prefixes [0, i]."""
    n = p.Q.shape[-2]
    i = data.draw(st.integers(0, n - 1))
    O, state = ta.attention_forward(*p.X, scale=p.scale, causal=True, **impl)
    args = [p.Q[..., i : i + 1, :]] + [x[..., : i + 1, :] for x in p.X[1:]]
    Oi, sti = ta.attention_forward(*args, scale=p.scale, causal=False, **impl)
    mag = dense_magnitudes(*args, scale=p.scale)
    logit = mag["logit"]
    rel = RTOL64 * (1 + logit)
    _tight(O[..., i : i + 1, :], Oi, mag["O"], p.dtype, logit=logit, sums=_sums(p))
    np.testing.assert_allclose(state.lse[..., i], sti.lse[..., 0], rtol=0,
                               atol=rel * (1 + np.abs(sti.lse).max()))
    ref, _ = dense_attention(*args, scale=p.scale)
    assert ref.shape == Oi.shape
