"""The certified low-rank polynomial surrogate of n-way attention (SPEC §9): ``method="poly"`` of
:func:`tattn_numba.nway_attention` and friends, and :func:`tattn_numba.nway_poly_plan`.

Ground truth is the dense reference below, written plainly: one einsum over the full
(n, m1, …, mt) logit tensor with the exact softmax (float64, or np.longdouble where a certified
bound is compared with errors near float64's resolution) and SPEC §2's gradients term by term.
Approximate results are tested against their certified bound (``plan.output_bound``), never
against equality; the only allowance is 1e-12 of the bound plus the reference's own rounding.
The surrogate gradient is SPEC §2 with the surrogate weights P̃ for P (as for t = 2); it is
checked against finite differences of the surrogate's own loss at a degree where the
polynomial's derivative matches e^x to float64 resolution, and against the exact gradient.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import central_difference_directional

import tattn_numba as ta

_AXES = "jkpq"  # key axes of the dense tensor (i the query, l features, m values)


# --------------------------------------------------------------------------------------------
# dense reference
# --------------------------------------------------------------------------------------------

def _dense_probabilities(Q, keys, scale=None, causal=False, dtype=np.float64):
    """Softmax over the key tuples of s·Σ_l Q[i,l]·Π_a Ka[j_a,l], shape (..., n, m1, …, mt)."""
    t = len(keys)
    Q = np.asarray(Q).astype(dtype)
    keys = [np.asarray(K).astype(dtype) for K in keys]
    s = dtype(1.0) / dtype(Q.shape[-1]) if scale is None else dtype(scale)
    ax = _AXES[:t]
    logits = s * np.einsum(",".join(["...il"] + [f"...{c}l" for c in ax]) + f"->...i{ax}", Q, *keys)
    if causal:
        n = Q.shape[-2]
        allowed = np.ones(logits.shape[-t - 1:], dtype=bool)
        for a in range(t):
            j = np.arange(n).reshape([1] * (a + 1) + [-1] + [1] * (t - a - 1))
            allowed &= j <= np.arange(n).reshape([-1] + [1] * t)
        logits = np.where(allowed, logits, dtype(-np.inf))
    axes = tuple(range(-t, 0))
    E = np.exp(logits - logits.max(axis=axes, keepdims=True))
    return E / E.sum(axis=axes, keepdims=True)


def _dense(Q, keys, values, scale=None, causal=False, dtype=np.float64):
    """Exact n-way attention output (..., n, dv)."""
    ax = _AXES[:len(keys)]
    P = _dense_probabilities(Q, keys, scale, causal, dtype)
    values = [np.asarray(V).astype(dtype) for V in values]
    return np.einsum(",".join([f"...i{ax}"] + [f"...{c}m" for c in ax]) + "->...im", P, *values)


def _dense_grads(Q, keys, values, dO, scale=None, causal=False):
    """Exact gradients (dQ, dkeys, dvalues) of ⟨dO, O⟩ (SPEC §2 for t key sets), float64."""
    t = len(keys)
    ax = _AXES[:t]
    s = 1.0 / Q.shape[-1] if scale is None else scale
    P = _dense_probabilities(Q, keys, scale, causal)
    O = _dense(Q, keys, values, scale, causal)
    delta = np.einsum("...im,...im->...i", dO, O)
    dS = np.einsum(",".join(["...im"] + [f"...{c}m" for c in ax]) + f"->...i{ax}", dO, *values)
    dZ = P * (dS - delta.reshape(delta.shape + (1,) * t))
    dQ = s * np.einsum(",".join([f"...i{ax}"] + [f"...{c}l" for c in ax]) + "->...il", dZ, *keys)
    dkeys, dvalues = [], []
    for a in range(t):
        others = [b for b in range(t) if b != a]
        dkeys.append(s * np.einsum(",".join([f"...i{ax}", "...il"] + [f"...{ax[b]}l" for b in others])
                                   + f"->...{ax[a]}l", dZ, Q, *[keys[b] for b in others]))
        dvalues.append(np.einsum(",".join([f"...i{ax}", "...im"] + [f"...{ax[b]}m" for b in others])
                                 + f"->...{ax[a]}m", P, dO, *[values[b] for b in others]))
    return dQ, dkeys, dvalues


def _inputs(rng, n, ms, d, dv, batch=(), dtype=np.float64, low=-1.0, high=1.0):
    Q = rng.uniform(low, high, batch + (n, d)).astype(dtype)
    keys = tuple(rng.uniform(low, high, batch + (m, d)).astype(dtype) for m in ms)
    values = tuple(rng.uniform(-1.0, 1.0, batch + (m, dv)).astype(dtype) for m in ms)
    return Q, keys, values


def _assert_within_bound(O, exact, bound, label=""):
    """|O − exact| <= bound entrywise, allowing 1e-12 of the bound and the reference's rounding."""
    error = np.abs(np.asarray(O, dtype=np.longdouble) - exact).astype(np.float64)
    slack = 1e-12 * bound + 1e-300
    assert np.all(error <= bound + slack), (label, float((error / bound).max()), float(error.max()), float(bound.max()))
    return error


def _shapes(t, causal, n=5):
    return [n] * t if causal else [4, 3, 2, 3][:t]


# --------------------------------------------------------------------------------------------
# output and its certificate
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("t", [1, 2, 3, 4])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("options", [{"degree": 2}, {"degree": 5}, {"degree": 5, "family": "taylor"}, {"tol": 1e-7}])
def test_output_within_certificate_and_not_absurdly_loose(t, causal, options):
    """Benign inputs (uniform [−1, 1]): the certified bound holds everywhere and, for the
    Chebyshev family, is within 10^4 of the largest error (measured 12–850 here). Taylor's error
    grows like (x/R)^{g+1}, so on logits far inside the certified radius (products of t + 1
    uniform entries) its a-priori bound is looser (measured up to 3·10^4 at g = 5)."""
    rng = np.random.default_rng(10 * t + causal)
    Q, keys, values = _inputs(rng, 5, _shapes(t, causal), 3, 2, batch=(2,))
    O, state = ta.nway_attention_forward(Q, keys, values, causal=causal, method="poly", **options)
    plan = state.certificate
    assert O.shape == (2, 5, 2) and plan.output_bound.shape == O.shape and plan.radius.shape == (2, 5)
    exact = _dense(Q, keys, values, causal=causal, dtype=np.longdouble)
    error = _assert_within_bound(O, exact, plan.output_bound, (t, causal, options))
    if plan.family == "chebyshev":
        assert plan.max_output_bound <= 1e4 * error.max()
    if "tol" in options:
        assert plan.max_output_bound <= options["tol"]
    np.testing.assert_array_equal(O, ta.nway_attention(Q, keys, values, causal=causal, method="poly", **options))


@pytest.mark.parametrize("t", [1, 3, 4])
def test_plan_reports_degree_rank_radii_and_bound(t):
    rng = np.random.default_rng(t)
    Q, keys, values = _inputs(rng, 6, _shapes(t, False), 3, 2)
    plan = ta.nway_poly_plan(Q, keys, values, tol=1e-6)
    assert plan.rank == ta.poly.features.rank(3, plan.degree)
    assert plan.max_output_bound <= 1e-6 and plan.coefficients.shape == (6, plan.degree + 1)
    # the radius bounds every row's absolute logit sum, and never exceeds the global one
    s = 1.0 / 3
    ax = _AXES[:t]
    absolute = s * np.einsum(",".join(["il"] + [f"{c}l" for c in ax]) + f"->i{ax}", np.abs(Q),
                             *[np.abs(K) for K in keys])
    assert np.all(absolute.reshape(6, -1).max(axis=1) <= plan.radius)
    assert np.all(plan.radius <= plan.global_radius * 1.01)
    # the degree is the smallest that certifies tol
    lower = ta.nway_poly_plan(Q, keys, values, degree=plan.degree - 1)
    assert lower.max_output_bound > 1e-6
    _, state = ta.nway_attention_forward(Q, keys, values, method="poly", tol=1e-6)
    np.testing.assert_array_equal(state.certificate.output_bound, plan.output_bound)
    assert state.method == "poly" and state.options == {"tol": 1e-6}


def test_error_falls_with_degree():
    rng = np.random.default_rng(3)
    Q, keys, values = _inputs(rng, 6, [4, 3, 5], 2, 2, low=-1.5, high=1.5)
    exact = _dense(Q, keys, values)
    errors = [np.abs(ta.nway_attention(Q, keys, values, method="poly", degree=g) - exact).max() for g in (4, 6, 8, 14)]
    assert errors[0] > errors[1] > errors[2] > errors[3] and errors[3] < 1e-9


def test_zero_queries_are_exact_uniform_attention():
    rng = np.random.default_rng(4)
    _, keys, values = _inputs(rng, 3, [3, 2, 4], 2, 2)
    Q = np.zeros((3, 2))
    O, state = ta.nway_attention_forward(Q, keys, values, method="poly", degree=1)
    assert np.all(state.certificate.radius == 0.0)
    np.testing.assert_allclose(O, _dense(Q, keys, values), rtol=0, atol=1e-15)


# --------------------------------------------------------------------------------------------
# t = 2 agrees with attention(method="poly")
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("options", [{"tol": 1e-5}, {"degree": 5}, {"tol": 1e-3, "family": "taylor"}])
def test_t2_agrees_with_attention_poly(causal, dtype, options):
    """Same degree, rank, radii and output bound; outputs and gradients to rounding."""
    rng = np.random.default_rng(5)
    n = 7
    ms = (n, n) if causal else (6, 4)
    Q, keys, values = _inputs(rng, n, ms, 3, 2, batch=(2,), dtype=dtype, low=-1.5, high=1.5)
    dO = rng.standard_normal((2, n, 2)).astype(dtype)
    O2, pair = ta.attention_forward(Q, *keys, *values, method="poly", causal=causal, **options)
    On, nway = ta.nway_attention_forward(Q, keys, values, method="poly", causal=causal, **options)
    p2, pn = pair.certificate, nway.certificate
    assert (p2.degree, p2.rank) == (pn.degree, pn.rank)
    np.testing.assert_array_equal(p2.radius, pn.radius)
    np.testing.assert_array_equal(pn.output_bound, p2.output_bound)
    tol = 1e-13 if dtype == np.float64 else 1e-6
    np.testing.assert_allclose(On, O2, rtol=0, atol=tol)
    g2 = ta.attention_backward(pair, dO)
    gn = ta.nway_attention_backward(nway, dO)
    for a, b in zip(g2, (gn.dQ, *gn.dkeys, *gn.dvalues)):
        assert a.dtype == b.dtype == dtype
        np.testing.assert_allclose(b, a, rtol=0, atol=tol * max(1.0, float(np.abs(a).max())))


# --------------------------------------------------------------------------------------------
# gradients
# --------------------------------------------------------------------------------------------

def _surrogate_loss(Q, keys, values, dO, causal, degree):
    O = ta.nway_attention(Q, keys, values, causal=causal, method="poly", degree=degree)
    return float(np.sum(dO * O))


@pytest.mark.parametrize("t", [1, 2, 3, 4])
@pytest.mark.parametrize("causal", [False, True])
def test_gradient_matches_finite_differences_of_the_surrogate_loss(t, causal):
    """Directional central differences (5 points) of ⟨dO, Õ⟩ along a random direction of all
    operands at once, degree 14 (P' = P = e^x to ~1e-15 on these radii)."""
    rng = np.random.default_rng(20 + t + 10 * causal)
    Q, keys, values = _inputs(rng, 4, _shapes(t, causal, n=4), 2, 2)
    dO = rng.standard_normal((4, 2))
    operands = [Q, *keys, *values]
    sizes = [x.size for x in operands]
    split = np.cumsum(sizes)[:-1]

    def unpack(x):
        parts = [p.reshape(o.shape) for p, o in zip(np.split(x, split), operands)]
        return parts[0], parts[1:1 + t], parts[1 + t:]

    def loss(x):
        Qx, kx, vx = unpack(x)
        return _surrogate_loss(Qx, kx, vx, dO, causal, 14)

    x0 = np.concatenate([o.ravel() for o in operands])
    direction = rng.standard_normal(x0.shape)
    grads = ta.nway_attention_grad(Q, keys, values, dO, causal=causal, method="poly", degree=14)
    flat = np.concatenate([g.ravel() for g in (grads.dQ, *grads.dkeys, *grads.dvalues)])
    fd = central_difference_directional(loss, x0, direction, h=1e-3)
    assert abs(fd - flat @ direction) <= 1e-8 * (1.0 + np.abs(flat) @ np.abs(direction)), (fd, flat @ direction)


@pytest.mark.parametrize("t", [1, 3, 4])
@pytest.mark.parametrize("causal", [False, True])
def test_gradient_converges_to_the_exact_gradient(t, causal):
    rng = np.random.default_rng(30 + t)
    Q, keys, values = _inputs(rng, 5, _shapes(t, causal), 3, 2, batch=(2,))
    dO = rng.standard_normal((2, 5, 2))
    exact = _dense_grads(Q, keys, values, dO, causal=causal)
    for degree, tol in ((3, 1e-2), (14, 1e-12)):
        g = ta.nway_attention_grad(Q, keys, values, dO, causal=causal, method="poly", degree=degree)
        for got, ref in zip((g.dQ, *g.dkeys, *g.dvalues), (exact[0], *exact[1], *exact[2])):
            assert got.shape == ref.shape
            np.testing.assert_allclose(got, ref, rtol=0, atol=tol)


def test_float32_gradients_follow_float64():
    rng = np.random.default_rng(6)
    Q, keys, values = _inputs(rng, 5, [5, 5, 5], 2, 2)
    dO = rng.standard_normal((5, 2))
    cast = lambda xs: tuple(x.astype(np.float32) for x in xs)  # noqa: E731
    g64 = ta.nway_attention_grad(Q, keys, values, dO, causal=True, method="poly", degree=6)
    g32 = ta.nway_attention_grad(Q.astype(np.float32), cast(keys), cast(values), dO.astype(np.float32), causal=True,
                                 method="poly", degree=6)
    for a, b in zip((g64.dQ, *g64.dkeys, *g64.dvalues), (g32.dQ, *g32.dkeys, *g32.dvalues)):
        assert b.dtype == np.float32
        np.testing.assert_allclose(b, a, rtol=0, atol=2e-6 * max(1.0, float(np.abs(a).max())))


def test_chunking_does_not_change_results(monkeypatch):
    rng = np.random.default_rng(7)
    Q, keys, values = _inputs(rng, 9, [9, 9, 9], 2, 2)
    dO = rng.standard_normal((9, 2))
    results = []
    for rows in (8192, 2):
        monkeypatch.setattr(ta.config, "POLY_CHUNK_ROWS", rows)
        for causal in (False, True):
            O, state = ta.nway_attention_forward(Q, keys, values, causal=causal, method="poly", degree=4)
            g = ta.nway_attention_backward(state, dO)
            results.append((state.certificate.chunk_rows, [O, g.dQ, *g.dkeys, *g.dvalues]))
    assert [r[0] for r in results] == [9, 9, 2, 2]
    for (_, a), (_, b) in zip(results[:2], results[2:]):
        for x, y in zip(a, b):
            np.testing.assert_allclose(x, y, rtol=0, atol=1e-13)


# --------------------------------------------------------------------------------------------
# gradient certificates
# --------------------------------------------------------------------------------------------

def _check_gradient_bounds(Q, keys, values, dO, causal, options, label):
    """Every entry of |surrogate gradient − exact gradient| is within nway_poly_gradient_bounds."""
    _, state = ta.nway_attention_forward(Q, keys, values, causal=causal, method="poly", **options)
    grads = ta.nway_attention_backward(state, dO)
    bounds = ta.nway_poly_gradient_bounds(state, dO)
    f64 = lambda xs: [np.asarray(x, dtype=np.float64) for x in xs]  # noqa: E731
    exact = _dense_grads(np.asarray(Q, np.float64), f64(keys), f64(values), np.asarray(dO, np.float64), causal=causal)
    names = ["dQ"] + [f"dkeys[{a}]" for a in range(len(keys))] + [f"dvalues[{a}]" for a in range(len(keys))]
    for name, g, r, b in zip(names, (grads.dQ, *grads.dkeys, *grads.dvalues), (exact[0], *exact[1], *exact[2]),
                             (bounds.dQ, *bounds.dkeys, *bounds.dvalues)):
        assert g.shape == r.shape == b.shape
        error = np.abs(g.astype(np.float64) - r)
        assert np.all(error <= b * (1 + 1e-12) + 1e-300), (label, name, float((error / b).max()))
    return state, bounds


@settings(max_examples=30, deadline=None)
@given(t=st.integers(1, 4), n=st.integers(1, 4), ms=st.lists(st.integers(1, 3), min_size=4, max_size=4),
       d=st.integers(1, 3), causal=st.booleans(), float32=st.booleans(),
       option=st.sampled_from([("degree", 3), ("degree", 8), ("tol", 1e-6)]), seed=st.integers(0, 2**16))
def test_gradient_bounds_hold_on_random_inputs(t, n, ms, d, causal, float32, option, seed):
    rng = np.random.default_rng(seed)
    dtype = np.float32 if float32 else np.float64
    Q, keys, values = _inputs(rng, n, [n] * t if causal else ms[:t], d, 2, dtype=dtype)
    dO = rng.standard_normal((n, 2)).astype(dtype)
    try:
        _check_gradient_bounds(Q, keys, values, dO, causal, dict([option]), (t, option))
    except ValueError as refusal:
        assert "tol" in str(refusal) or "degree" in str(refusal), str(refusal)


@pytest.mark.parametrize("causal", [False, True])
def test_gradient_bounds_for_t2_agree_with_poly_gradient_bounds(causal):
    rng = np.random.default_rng(16)
    n = 6
    Q, keys, values = _inputs(rng, n, (n, n) if causal else (5, 4), 3, 2, batch=(2,))
    dO = rng.standard_normal((2, n, 2))
    state, bounds = _check_gradient_bounds(Q, keys, values, dO, causal, {"tol": 1e-6}, "t=2")
    pair = ta.poly_gradient_bounds(ta.attention_forward(Q, *keys, *values, causal=causal, method="poly", tol=1e-6)[1],
                                   dO)
    for a, b in zip(pair, (bounds.dQ, *bounds.dkeys, *bounds.dvalues)):
        np.testing.assert_allclose(b, a, rtol=1e-12)


def test_gradient_bounds_on_the_radius_edge_and_a_single_tuple():
    for t in (1, 3):
        Q, keys, values = _edge_inputs(t, 2, 4.0, [2, 1, 3][:t])
        _check_gradient_bounds(Q, keys, values, np.ones((1, 1)), False, {"degree": 12}, ("edge", t))
        rng = np.random.default_rng(t)
        single = [rng.choice([-1.0, 1.0], (1, 2)) for _ in range(t)]
        _check_gradient_bounds(rng.uniform(-2, 2, (4, 2)), single, [rng.uniform(-3, 3, (1, 2)) for _ in range(t)],
                               rng.standard_normal((4, 2)), False, {"tol": 1e-9}, ("single", t))


def test_gradient_bounds_need_a_poly_state():
    Q, keys, values = _small()
    _, state = ta.nway_attention_forward(Q, keys, values)
    with pytest.raises(TypeError, match=r"state must come from nway_attention_forward\(\.\.\., method='poly'\)"):
        ta.nway_poly_gradient_bounds(state, np.ones((3, 2)))


# --------------------------------------------------------------------------------------------
# property test
# --------------------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(t=st.integers(1, 4), n=st.integers(1, 4), ms=st.lists(st.integers(1, 4), min_size=4, max_size=4),
       d=st.integers(1, 3), dv=st.integers(1, 2), causal=st.booleans(), float32=st.booleans(),
       bound=st.sampled_from([0.5, 1.0, 2.0]), option=st.sampled_from([("degree", 1), ("degree", 4), ("tol", 1e-4),
                                                                        ("tol", 1e-8)]),
       seed=st.integers(0, 2**16))
def test_certificate_holds_on_random_inputs(t, n, ms, d, dv, causal, float32, bound, option, seed):
    rng = np.random.default_rng(seed)
    lengths = [n] * t if causal else ms[:t]
    dtype = np.float32 if float32 else np.float64
    Q, keys, values = _inputs(rng, n, lengths, d, dv, dtype=dtype, low=-bound, high=bound)
    try:
        O, state = ta.nway_attention_forward(Q, keys, values, causal=causal, method="poly", **dict([option]))
    except ValueError as refusal:  # allowed only for a named reason
        assert "tol" in str(refusal) or "degree" in str(refusal), str(refusal)
        return
    assert O.dtype == dtype
    _assert_within_bound(O, _dense(Q, keys, values, causal=causal, dtype=np.longdouble),
                         state.certificate.output_bound, (t, lengths, option))


# --------------------------------------------------------------------------------------------
# adversarial inputs for the certificate
# --------------------------------------------------------------------------------------------

def _edge_inputs(t, d, radius, copies):
    """One query c·1 and key sets whose rows are ±1 (copies[a] of each sign): the absolute logit
    sum of every tuple equals both radii exactly (ℓ∞ and Hölder), so every logit is ±R with
    R = c·d (scale 1); a tuple's sign is the product of its rows' signs. Key set 1's rows carry
    the values +1 (+ rows) and −0.5 (− rows), the other sets' rows 1 (+) and 2 (−)."""
    Q = np.full((1, d), radius / d)
    keys, values = [], []
    for a in range(t):
        signs = np.repeat([1.0, -1.0], copies[a])
        keys.append(np.repeat(signs[:, None], d, axis=1))
        values.append(np.where(signs > 0, 1.0, -0.5 if a == 0 else 2.0)[:, None])
    return Q, keys, values


@pytest.mark.parametrize("t", [1, 2, 3, 4])
@pytest.mark.parametrize("radius,options", [(1.0, {"degree": 3}), (1.0, {"degree": 4, "family": "taylor"}),
                                            (4.0, {"degree": 12}), (4.0, {"tol": 1e-9})])
def test_logits_at_the_radius_edge(t, radius, options):
    """Every logit at ±R exactly (the largest the radius allows), where the polynomial's error is
    largest for Taylor and at a node-free end for Chebyshev: the bound holds."""
    Q, keys, values = _edge_inputs(t, 2, radius, [2, 1, 3, 2][:t])
    try:
        O, state = ta.nway_attention_forward(Q, keys, values, scale=1.0, method="poly", **options)
    except ValueError as refusal:  # allowed only naming the option (measured: tol=1e-9 for t >= 3)
        assert "tol=1e-09 is unreachable" in str(refusal) and t >= 3
        return
    assert np.all(state.certificate.radius >= radius)
    _assert_within_bound(O, _dense(Q, keys, values, scale=1.0, dtype=np.longdouble), state.certificate.output_bound,
                         (t, radius, options))


@pytest.mark.parametrize("t", [1, 2, 3, 4])
@pytest.mark.parametrize("family, degree", [("chebyshev", 3), ("taylor", 4), ("chebyshev", 6)])
def test_output_bound_is_nearly_attained_on_an_adversarial_row(t, family, degree):
    """A bound that could never fail is not a test: half the softmax mass on the logit where the
    polynomial's relative error is largest (tuple value +1), half where it is most negative (−1),
    the logits carried by key set 1 and the other key sets' rows all 1. The error must reach
    1/10 of the certified bound (as for t = 2; measured 1/6.5 Chebyshev g = 3, 1/4.1 Taylor g = 4,
    1/5.5 Chebyshev g = 6, for every t)."""
    R = 1.0
    probe = ta.nway_poly_plan(np.ones((1, 1)), [np.array([[R], [-R]])] + [np.ones((1, 1))] * (t - 1),
                              [np.ones((2, 1))] + [np.ones((1, 1))] * (t - 1), scale=1.0, degree=degree, family=family)
    x = np.linspace(-R, R, 20001)
    eta = np.polynomial.polynomial.polyval(x / probe.radius[0], probe.coefficients[0]) * np.exp(-x) - 1.0
    xa, xb = x[np.argmax(eta)], x[np.argmin(eta)]
    copies_a = int(round(50 * np.exp(max(xb - xa, 0.0))))
    copies_b = int(round(50 * np.exp(max(xa - xb, 0.0))))
    K1 = np.array([[xa]] * copies_a + [[xb]] * copies_b + [[-R]])
    V1 = np.array([[1.0]] * copies_a + [[-1.0]] * copies_b + [[0.0]])
    keys = [K1] + [np.ones((2, 1))] * (t - 1)
    values = [V1] + [np.ones((2, 1))] * (t - 1)
    O, state = ta.nway_attention_forward(np.ones((1, 1)), keys, values, scale=1.0, method="poly", degree=degree,
                                         family=family)
    np.testing.assert_array_equal(state.certificate.coefficients, probe.coefficients)
    error = _assert_within_bound(O, _dense(np.ones((1, 1)), keys, values, scale=1.0, dtype=np.longdouble),
                                 state.certificate.output_bound)
    assert error.max() >= state.certificate.max_output_bound / 10, (error.max(), state.certificate.max_output_bound)


@pytest.mark.parametrize("t", [1, 2, 3])
@pytest.mark.parametrize("radius", [1.0, 8.0, 12.0, 14.0])
def test_logits_at_the_lower_edge_with_nearly_constant_values(t, radius):
    """Every logit at −R (all keys of set 1 negative), values 1 + 1e-5·noise, tol 1e-4: the
    normaliser is (tuples)·e^{−R}, where rounding amplified by the polynomial's cancellation is
    largest. Certified, or refused naming tol."""
    rng = np.random.default_rng(int(radius) + t)
    d = 2
    c = radius / d
    Q = np.full((4, d), c) * rng.uniform(0.9, 1.0, (4, 1))
    keys = [np.full((3, d), -1.0 if a == 0 else 1.0) for a in range(t)]
    values = [1.0 + 1e-5 * rng.standard_normal((3, 2)) for _ in range(t)]
    for options in ({"tol": 1e-4}, {"degree": 20}):
        try:
            O, state = ta.nway_attention_forward(Q, keys, values, scale=1.0, method="poly", **options)
        except ValueError as refusal:
            assert "tol" in str(refusal) or "degree" in str(refusal)
            continue
        _assert_within_bound(O, _dense(Q, keys, values, scale=1.0, dtype=np.longdouble),
                             state.certificate.output_bound, (t, radius, options))


@pytest.mark.parametrize("t", [1, 2, 3, 4])
@pytest.mark.parametrize("radius", [1.0, 8.0, 13.0])
def test_single_key_tuple_gives_the_value_product(t, radius):
    """m_a = 1: O = V1 ∘ … ∘ Vt exactly (any positive weight); the bound is then rounding only."""
    rng = np.random.default_rng(t)
    Q = rng.uniform(0.5, 1.0, (6, 2)) * radius / 2
    keys = [rng.choice([-1.0, 1.0], (1, 2)) for _ in range(t)]
    values = [rng.uniform(-3.0, 3.0, (1, 3)) for _ in range(t)]
    exact = np.prod([V.astype(np.longdouble) for V in values], axis=0) * np.ones((6, 1), dtype=np.longdouble)
    for options in ({"tol": 1e-6}, {"tol": 1e-12}, {"degree": 20}):
        try:
            O, state = ta.nway_attention_forward(Q, keys, values, scale=1.0, method="poly", **options)
        except ValueError as refusal:
            assert "tol" in str(refusal) or "degree" in str(refusal)
            continue
        _assert_within_bound(O, exact, state.certificate.output_bound, (t, radius, options))


@pytest.mark.parametrize("t", [1, 3])
def test_nearly_constant_values(t):
    """Values 1e6 + noise and 1 + 1e-12·noise: a tiny range, the bound is mostly rounding."""
    rng = np.random.default_rng(8)
    Q, keys, _ = _inputs(rng, 6, _shapes(t, False), 3, 2, low=-2.0, high=2.0)
    for offset, noise in ((1e6, 1.0), (1.0, 1e-12)):
        values = tuple(offset ** (1.0 / t) + noise * rng.standard_normal((K.shape[0], 2)) for K in keys)
        for options in ({"tol": 1e-6}, {"degree": 6}):
            try:
                O, state = ta.nway_attention_forward(Q, keys, values, method="poly", **options)
            except ValueError as refusal:
                assert "tol" in str(refusal)
                continue
            _assert_within_bound(O, _dense(Q, keys, values, dtype=np.longdouble), state.certificate.output_bound,
                                 (offset, options))


@pytest.mark.parametrize("t", [1, 2, 3])
@pytest.mark.parametrize("tol", [1e-9, 1e-8, 1e-7, 1e-6])
def test_float32_with_a_tight_tolerance(t, tol):
    """float32 in and out: the certificate includes the final cast (u = 2^-24 and 2^-150), so a
    tolerance under float32's resolution is refused naming tol; otherwise it holds."""
    rng = np.random.default_rng(9)
    Q, keys, values = _inputs(rng, 8, [8] * t, 3, 3, dtype=np.float32)
    for causal in (False, True):
        try:
            O, state = ta.nway_attention_forward(Q, keys, values, causal=causal, method="poly", tol=tol)
        except ValueError as refusal:
            assert f"tol={tol!r}" in str(refusal) and "float32" in str(refusal)
            assert tol < 1e-7
            continue
        assert O.dtype == np.float32 and state.certificate.max_output_bound <= tol
        _assert_within_bound(O, _dense(Q, keys, values, causal=causal, dtype=np.longdouble),
                             state.certificate.output_bound, (t, tol, causal))


def test_float32_tiny_outputs_count_the_subnormal_cast():
    """Outputs far below float32's normal range: the cast's error is absolute (2^-150)."""
    rng = np.random.default_rng(11)
    Q, keys, values = _inputs(rng, 4, [3, 3, 3], 2, 2, dtype=np.float32)
    values = tuple((v * 1e-15).astype(np.float32) for v in values)
    O, state = ta.nway_attention_forward(Q, keys, values, method="poly", degree=6)
    assert np.all(state.certificate.output_bound >= 2.0**-150)
    _assert_within_bound(O, _dense(Q, keys, values, dtype=np.longdouble), state.certificate.output_bound)


@pytest.mark.parametrize("t", [1, 2, 3, 4])
@pytest.mark.parametrize("causal", [False, True])
def test_values_of_both_signs_cancelling(t, causal):
    """Tuple products ±1 in equal numbers over near-uniform weights: O ≈ 0, the error is
    absolute and the bound must still hold."""
    rng = np.random.default_rng(12)
    Q, keys, _ = _inputs(rng, 4, [4] * t, 2, 2, low=-0.3, high=0.3)
    values = [np.tile([[1.0, -1.0], [-1.0, 1.0]], (2, 1)) for _ in range(t)]
    O, state = ta.nway_attention_forward(Q, keys, values, causal=causal, method="poly", degree=3)
    exact = _dense(Q, keys, values, causal=causal, dtype=np.longdouble)
    assert np.abs(exact[-1]).max() < 0.2
    _assert_within_bound(O, exact, state.certificate.output_bound, (t, causal))


# --------------------------------------------------------------------------------------------
# refusals
# --------------------------------------------------------------------------------------------

def _small():
    rng = np.random.default_rng(13)
    return _inputs(rng, 3, [3, 2, 2], 2, 2)


@pytest.mark.parametrize("options,error,match", [
    ({}, ValueError, "exactly one of tol .* or degree .*got neither"),
    ({"tol": 1e-3, "degree": 2}, ValueError, "exactly one of tol .*got both tol and degree"),
    ({"tol": -1.0}, ValueError, "tol must be positive and finite"),
    ({"tol": "1e-3"}, TypeError, "tol must be a positive real number"),
    ({"degree": -1}, ValueError, "degree"),
    ({"degree": 2.5}, TypeError, "degree"),
    ({"degree": 2, "family": "legendre"}, ValueError, "family"),
    ({"degree": 2, "memory_budget": 0}, ValueError, "memory_budget must be a positive whole number"),
    ({"tol": 1e-300}, ValueError, r"tol=1e-300 is unreachable"),
    ({"degree": 2, "window": 3}, TypeError, r"unknown option\(s\) \['window'\] for method='poly'"),
])
def test_bad_options_name_the_argument(options, error, match):
    Q, keys, values = _small()
    with pytest.raises(error, match=match):
        ta.nway_attention(Q, keys, values, method="poly", **options)
    with pytest.raises(error, match=match):
        ta.nway_attention_grad(Q, keys, values, np.ones((3, 2)), method="poly", **options)


def test_options_are_refused_by_the_exact_method():
    Q, keys, values = _small()
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['tol'\] for method='exact'; accepted options: none"):
        ta.nway_attention(Q, keys, values, tol=1e-3)


def test_degree_too_low_for_the_radius_is_refused():
    _, _, values = _small()
    Q, keys = np.full((3, 2), 1.5), [np.ones((3, 2)), -np.ones((2, 2)), np.ones((2, 2))]
    with pytest.raises(ValueError, match=r"degree 1 is too low .*logit radius up to 3.*use degree >= \d+ or pass tol"):
        ta.nway_attention(Q, keys, values, scale=1.0, method="poly", degree=1)


def test_unreachable_radius_is_refused_naming_tol():
    Q, keys, values = _small()
    with pytest.raises(ValueError, match=r"tol=1e-06 is unreachable at logit radius"):
        ta.nway_attention(100.0 * Q, keys, values, scale=1.0, method="poly", tol=1e-6)


def test_memory_over_budget_is_refused_before_allocating():
    rng = np.random.default_rng(14)
    Q, keys, values = _inputs(rng, 64, [64, 64, 64], 4, 4)
    with pytest.raises(ValueError, match=r"degree 6 needs rank r = C\(d \+ g, g\) = 210 .*above the memory budget "
                                         r".*raise memory_budget"):
        ta.nway_attention(Q, keys, values, method="poly", degree=6, memory_budget=100_000)
    with pytest.raises(ValueError, match=r"at least .* \(at any degree\), above the memory budget .*raise memory_budget"):
        ta.nway_poly_plan(Q, keys, values, tol=1e-3, memory_budget=10_000)
    plan = ta.nway_poly_plan(Q, keys, values, degree=6, causal=True)
    assert 0 < plan.estimated_bytes < ta.config.MEMORY_BUDGET_BYTES


def test_backward_refuses_a_modified_operand():
    Q, keys, values = _small()
    keys = [K.copy() for K in keys]
    _, state = ta.nway_attention_forward(Q, keys, values, method="poly", degree=3)
    keys[1][0, 0] += 1.0
    with pytest.raises(ValueError, match=r"keys\[1\] was modified after nway_attention_forward"):
        ta.nway_attention_backward(state, np.ones((3, 2)))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_memory_estimate_covers_the_traced_peak(causal, dtype, monkeypatch):
    """The plan's estimate of forward + backward bounds what NumPy allocates (tracemalloc; the
    kernels' own scratch is O(t·r·(1 + dv + d + dv·d)), measured: estimate 1.1–1.7× the peak)."""
    import tracemalloc

    monkeypatch.setattr(ta.config, "POLY_CHUNK_ROWS", 32)
    rng = np.random.default_rng(15)
    n = 96
    Q, keys, values = _inputs(rng, n, [n] * 3 if causal else [50, 61, 40], 3, 3, batch=(2,), dtype=dtype)
    dO = rng.standard_normal((2, n, 3)).astype(dtype)
    ta.nway_attention_grad(Q, keys, values, dO, causal=causal, method="poly", degree=4)  # compile outside the trace
    tracemalloc.start()
    try:
        ta.nway_attention_grad(Q, keys, values, dO, causal=causal, method="poly", degree=4)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= ta.nway_poly_plan(Q, keys, values, causal=causal, degree=4).estimated_bytes


def test_value_products_overflowing_float64_are_refused():
    Q, keys, values = _small()
    huge = [1e120 * V for V in values]
    with pytest.raises(ValueError, match=r"tuple products V1\[j1\]·…·Vt\[jt\] overflow float64 .*rescale the values"):
        ta.nway_attention(Q, keys, huge, method="poly", degree=3)


def test_leading_dimensions_map_over_entries():
    rng = np.random.default_rng(17)
    Q, keys, values = _inputs(rng, 4, [3, 2, 4], 2, 2, batch=(2, 3))
    dO = rng.standard_normal((2, 3, 4, 2))
    O, state = ta.nway_attention_forward(Q, keys, values, method="poly", degree=5)
    grads = ta.nway_attention_backward(state, dO)
    bounds = ta.nway_poly_gradient_bounds(state, dO)
    assert state.certificate.output_bound.shape == O.shape == (2, 3, 4, 2) and state.lse.shape == (2, 3, 4)
    assert bounds.dkeys[2].shape == keys[2].shape
    for index in np.ndindex(2, 3):
        one = [x[index] for x in (Q, *keys, *values)]
        O1, state1 = ta.nway_attention_forward(one[0], one[1:4], one[4:], method="poly", degree=5)
        g1 = ta.nway_attention_backward(state1, dO[index])
        np.testing.assert_allclose(O[index], O1, rtol=0, atol=1e-15)
        for a, b in zip((grads.dQ, *grads.dkeys, *grads.dvalues), (g1.dQ, *g1.dkeys, *g1.dvalues)):
            np.testing.assert_allclose(a[index], b, rtol=0, atol=1e-14)
