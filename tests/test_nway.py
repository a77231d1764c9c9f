"""Attention of any order t (SPEC §9): :mod:`tattn_numba.nway` and :mod:`tattn_numba.exact.nway_cpu`.

The ground truth is the dense float64 reference below: one einsum over the full (n, m1, …, mt)
logit tensor and the hand-written backward of SPEC §2 generalised term by term, never derived
from the code under test. Tolerances: float64 results within 1e-10 of the sums of absolute
terms (the standard bound of a floating-point sum, with room); float32 results within twice
the error of the same formulas run entirely in float32 plus a few float32 ulps of those
magnitudes (FlashAttention's rule, as tests/reference.py's ``float32_tolerance``).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import EPS32, central_difference_directional

import tattn_numba as ta
from tattn_numba import config
from tattn_numba.exact import nway_cpu

_LETTERS = "jklpqr"  # key axes of the dense tensor (i is the query, z features, v values)


def _dense(Q, keys, values, dO, scale=None, causal=False, dtype=np.float64, absolute=False):
    """Dense n-way attention and its gradients: ``(O, lse, dQ, dkeys, dvalues)``.

    With ``absolute`` every operand is replaced by its absolute value inside the sums (P and δ
    kept signed-free: |dS| + |δ|), giving the sums of absolute terms of each result entry.
    """
    t = len(keys)
    Q, dO = (np.asarray(x).astype(dtype) for x in (Q, dO))
    keys = [np.asarray(k).astype(dtype) for k in keys]
    values = [np.asarray(v).astype(dtype) for v in values]
    s = dtype(1.0 / Q.shape[-1] if scale is None else scale)
    ax = _LETTERS[:t]
    S = s * np.einsum(",".join(["...iz"] + [f"...{c}z" for c in ax]) + f"->...i{ax}", Q, *keys)
    if causal:
        n = Q.shape[-2]
        allowed = np.ones(S.shape[-t - 1:], dtype=bool)
        for a in range(t):
            j = np.arange(keys[a].shape[-2]).reshape([1] * (a + 1) + [-1] + [1] * (t - a - 1))
            allowed &= j <= np.arange(n).reshape([-1] + [1] * t)
        S = np.where(allowed, S, dtype(-np.inf))
    axes = tuple(range(-t, 0))
    top = S.max(axis=axes, keepdims=True)
    E = np.exp(S - top)
    total = E.sum(axis=axes, keepdims=True)
    P = E / total
    lse = (np.log(total) + top).reshape(S.shape[:-t])
    if absolute:
        Q, dO, keys, values = np.abs(Q), np.abs(dO), [np.abs(k) for k in keys], [np.abs(v) for v in values]
    O = np.einsum(",".join([f"...i{ax}"] + [f"...{c}v" for c in ax]) + "->...iv", P, *values)
    delta = np.einsum("...iv,...iv->...i", dO, O)
    dS = np.einsum(",".join(["...iv"] + [f"...{c}v" for c in ax]) + f"->...i{ax}", dO, *values)
    dZ = P * (dS + delta.reshape(delta.shape + (1,) * t)) if absolute else P * (dS - delta.reshape(delta.shape + (1,) * t))
    dQ = s * np.einsum(",".join([f"...i{ax}"] + [f"...{c}z" for c in ax]) + "->...iz", dZ, *keys)
    dkeys, dvalues = [], []
    for a in range(t):
        others = [c for b, c in enumerate(ax) if b != a]
        dkeys.append(s * np.einsum(",".join([f"...i{ax}", "...iz"] + [f"...{c}z" for c in others]) + f"->...{ax[a]}z",
                                   dZ, Q, *[k for b, k in enumerate(keys) if b != a]))
        dvalues.append(np.einsum(",".join([f"...i{ax}", "...iv"] + [f"...{c}v" for c in others]) + f"->...{ax[a]}v",
                                 P, dO, *[v for b, v in enumerate(values) if b != a]))
    return O, lse, dQ, dkeys, dvalues


def _logit_abs(Q, keys, scale=None):
    """Largest sum of absolute logit terms."""
    s = 1.0 / Q.shape[-1] if scale is None else scale
    ax = _LETTERS[: len(keys)]
    Qa, ka = np.abs(np.asarray(Q, np.float64)), [np.abs(np.asarray(k, np.float64)) for k in keys]
    return float((s * np.einsum(",".join(["...iz"] + [f"...{c}z" for c in ax]) + f"->...i{ax}", Qa, *ka)).max())


def _inputs(rng, batch, n, ms, d, dv, dtype=np.float64, magnitude=1.0):
    batch = tuple(batch)
    Q = (magnitude * rng.standard_normal(batch + (n, d))).astype(dtype)
    keys = tuple((magnitude * rng.standard_normal(batch + (m, d))).astype(dtype) for m in ms)
    values = tuple((magnitude * rng.standard_normal(batch + (m, dv))).astype(dtype) for m in ms)
    dO = rng.standard_normal(batch + (n, dv)).astype(dtype)
    return Q, keys, values, dO


def _flatten_results(O, lse, dQ, dkeys, dvalues):
    return [O, lse, dQ, *dkeys, *dvalues]


_NAMES = ("O", "lse", "dQ")


def _check64(Q, keys, values, dO, scale=None, causal=False, rtol=1e-10):
    """Forward, lse and every gradient of the implementation against the dense reference."""
    O, state = ta.nway_attention_forward(Q, keys, values, scale=scale, causal=causal)
    grads = ta.nway_attention_backward(state, dO)
    got = _flatten_results(O, state.lse, grads.dQ, grads.dkeys, grads.dvalues)
    ref = _flatten_results(*_dense(Q, keys, values, dO, scale, causal))
    mag = _flatten_results(*_dense(Q, keys, values, dO, scale, causal, absolute=True))
    mag[1] = np.abs(ref[1]) + 1.0  # lse
    logit = _logit_abs(Q, keys, scale)
    for k, (g, r, m) in enumerate(zip(got, ref, mag)):
        assert g.shape == r.shape and g.dtype == np.asarray(Q).dtype or k == 1
        tol = rtol * (1.0 + logit) * (m + 1e-3 * m.max()) + 1e-300
        assert np.all(np.abs(g - r) <= tol), (k, np.max(np.abs(g - r) / tol))


CASES = [
    # (batch, n, ms, d, dv, causal)
    ((), 3, (4,), 3, 2, False),
    ((2,), 4, (4,), 2, 3, True),
    ((), 3, (2, 5), 3, 2, False),
    ((2,), 4, (4, 4), 2, 2, True),
    ((), 3, (2, 3, 4), 3, 2, False),
    ((2, 1), 2, (3, 1, 2), 2, 3, False),
    ((2,), 4, (4, 4, 4), 3, 2, True),
    ((), 2, (2, 3, 1, 2), 2, 2, False),
    ((2,), 3, (3, 3, 3, 3), 2, 2, True),
]


@pytest.mark.parametrize("batch,n,ms,d,dv,causal", CASES)
def test_float64_against_dense(batch, n, ms, d, dv, causal):
    rng = np.random.default_rng(len(ms) * 100 + n)
    Q, keys, values, dO = _inputs(rng, batch, n, ms, d, dv)
    _check64(Q, keys, values, dO, causal=causal)
    _check64(Q, keys, values, dO, scale=0.7, causal=causal)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("ms", [(7,), (5, 6, 7), (4, 5, 3, 6)])
def test_several_tiles_and_large_logits(monkeypatch, ms, causal):
    """Tiles of 3 × 2 rows: blocks of K_{t−1}, tiles of K_t and the running-maximum rescaling all
    run on tiny shapes; inputs of magnitude 2 give logits of tens."""
    monkeypatch.setattr(config, "KEY_TILE_1", 3)
    monkeypatch.setattr(config, "KEY_TILE_2", 2)
    rng = np.random.default_rng(7)
    n = ms[0] if causal else 5
    ms = (n,) * len(ms) if causal else ms
    Q, keys, values, dO = _inputs(rng, (2,), n, ms, 3, 2, magnitude=2.0)
    _check64(Q, keys, values, dO, scale=1.0, causal=causal)


def _naive32_error(Q, keys, values, dO, causal):
    return [np.max(np.abs(a.astype(np.float64) - b))
            for a, b in zip(_flatten_results(*_dense(Q, keys, values, dO, None, causal, dtype=np.float32)),
                            _flatten_results(*_dense(Q, keys, values, dO, None, causal)))]


@pytest.mark.parametrize("batch,n,ms,d,dv,causal", [c for c in CASES if len(c[2]) != 2])
def test_float32_flash_attention_rule(batch, n, ms, d, dv, causal):
    rng = np.random.default_rng(3 + n)
    Q, keys, values, dO = _inputs(rng, batch, n, ms, d, dv, dtype=np.float32)
    O, state = ta.nway_attention_forward(Q, keys, values, causal=causal)
    grads = ta.nway_attention_backward(state, dO)
    assert O.dtype == grads.dQ.dtype == np.float32
    assert all(g.dtype == np.float32 for g in grads.dkeys + grads.dvalues)
    got = _flatten_results(O, state.lse, grads.dQ, grads.dkeys, grads.dvalues)
    ref = _flatten_results(*_dense(Q, keys, values, dO, None, causal))
    mag = _flatten_results(*_dense(Q, keys, values, dO, None, causal, absolute=True))
    mag[1] = np.abs(ref[1]) + 1.0
    naive = _naive32_error(Q, keys, values, dO, causal)
    logit = _logit_abs(Q, keys)
    for k, (g, r, m, e) in enumerate(zip(got, ref, mag, naive)):
        tol = 2.0 * e + 4.0 * EPS32 * (1.0 + logit) * m
        assert np.all(np.abs(g.astype(np.float64) - r) <= tol), k


@pytest.mark.parametrize("t,causal", [(1, False), (3, False), (3, True), (4, False)])
def test_gradients_match_finite_differences(t, causal):
    """Directional derivatives of ⟨dO, O⟩ along a random direction of each operand, by the
    5-point central stencil on the implementation itself (float64)."""
    rng = np.random.default_rng(11 + t)
    n = 3
    ms = (n,) * t if causal else (3, 2, 3, 2)[:t]
    Q, keys, values, dO = _inputs(rng, (), n, ms, 2, 2)
    grads = ta.nway_attention_grad(Q, keys, values, dO, causal=causal)
    operands = [Q, *keys, *values]
    analytic = [grads.dQ, *grads.dkeys, *grads.dvalues]

    for k, x in enumerate(operands):
        def loss(y, k=k):
            ops = list(operands)
            ops[k] = y
            O = ta.nway_attention(ops[0], tuple(ops[1: t + 1]), tuple(ops[t + 1:]), causal=causal)
            return float(np.sum(dO * O))

        direction = rng.standard_normal(x.shape)
        numeric = central_difference_directional(loss, x, direction)
        assert abs(numeric - float(np.sum(analytic[k] * direction))) <= 1e-8 * (1.0 + abs(numeric)), k


@settings(max_examples=15, deadline=None)
@given(
    t=st.integers(1, 4),
    n=st.integers(1, 3),
    lengths=st.lists(st.integers(1, 3), min_size=4, max_size=4),
    d=st.integers(1, 3),
    dv=st.integers(1, 2),
    scale=st.one_of(st.none(), st.floats(0.05, 3.0)),
    causal=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_property_against_dense(t, n, lengths, d, dv, scale, causal, seed):
    ms = (n,) * t if causal else tuple(lengths[:t])
    rng = np.random.default_rng(seed)
    Q, keys, values, dO = _inputs(rng, (), n, ms, d, dv)
    _check64(Q, keys, values, dO, scale=scale, causal=causal)


@pytest.mark.parametrize("causal", [False, True])
def test_t2_is_tensor_attention(causal):
    """Dispatch is dtype-blind, so float64 suffices (float32 would only add the t = 2 kernels'
    float32 compilation, ~30 s, to this file)."""
    rng = np.random.default_rng(5)
    Q, keys, values, dO = _inputs(rng, (2,), 4, (4, 4), 3, 2)
    O = ta.nway_attention(Q, keys, values, causal=causal, scale=0.4)
    assert np.array_equal(O, ta.attention(Q, *keys, *values, causal=causal, scale=0.4))
    got = ta.nway_attention_grad(Q, keys, values, dO, causal=causal, scale=0.4)
    want = ta.attention_grad(Q, *keys, *values, dO, causal=causal, scale=0.4)
    assert np.array_equal(got.dQ, want.dQ)
    for g, w in zip(got.dkeys + got.dvalues, (want.dK1, want.dK2, want.dV1, want.dV2)):
        assert np.array_equal(g, w)


@pytest.mark.parametrize("causal", [False, True])
def test_kernel_at_t2_matches_tensor_attention(causal):
    """The public API sends t = 2 to ta.attention; the n-way kernels themselves also compute it."""
    rng = np.random.default_rng(6)
    Q, keys, values, dO = _inputs(rng, (2,), 5, (5, 5), 3, 2)
    O, lse = nway_cpu.forward(Q, keys, values, 0.5, causal)
    O_ref, state = ta.attention_forward(Q, *keys, *values, scale=0.5, causal=causal)
    np.testing.assert_allclose(O, O_ref, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(lse, state.lse, rtol=1e-12, atol=1e-13)
    dQ, dkeys, dvalues = nway_cpu.backward(Q, keys, values, 0.5, causal, O, lse, dO)
    want = ta.attention_backward(state, dO)
    for g, w in zip((dQ, *dkeys, *dvalues), want):
        np.testing.assert_allclose(g, w, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("causal", [False, True])
def test_t1_is_softmax_attention(causal):
    rng = np.random.default_rng(8)
    Q, (K,), (V,), _ = _inputs(rng, (2,), 5, (5,), 3, 4)
    S = 0.6 * Q @ np.swapaxes(K, -1, -2)
    if causal:
        S = np.where(np.tril(np.ones((5, 5), dtype=bool)), S, -np.inf)
    P = np.exp(S - S.max(axis=-1, keepdims=True))
    P /= P.sum(axis=-1, keepdims=True)
    np.testing.assert_allclose(ta.nway_attention(Q, [K], [V], scale=0.6, causal=causal), P @ V,
                               rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("t", [1, 3])
@pytest.mark.parametrize("query_lead,key_lead", [((2, 4), (2, 2)), ((4,), (1,)), ((3,), (2, 3)), ((2, 1), (2, 3))],
                         ids=["H=4 over Hk=2", "MQA", "Q broadcast over batch", "Q head axis broadcast"])
def test_grouped_and_broadcast_heads_equal_repeated_keys(t, query_lead, key_lead):
    """Grouped heads (query head h uses key head h // (H // Hk)) and broadcast leading axes give
    the results of the same problem with the keys and values repeated explicitly (the dense
    reference on the repeated arrays), and the key, value and query gradients summed over the
    entries that share them."""
    rng = np.random.default_rng([5, t, len(query_lead), len(key_lead)])
    n, ms, d, dv = 4, (3, 2, 3)[:t], 3, 2
    Q = rng.standard_normal(query_lead + (n, d))
    keys = tuple(rng.standard_normal(key_lead + (m, d)) for m in ms)
    values = tuple(rng.standard_normal(key_lead + (m, dv)) for m in ms)
    batch = np.broadcast_shapes(query_lead[:-1], key_lead[:-1]) + (max(query_lead[-1], key_lead[-1]),)
    group = batch[-1] // key_lead[-1]

    def expand(x, lead):  # repeat the head axis per group, then broadcast the rest
        if lead[-1] != batch[-1] and lead[-1] > 1:
            x = np.repeat(x, group, axis=len(lead) - 1)
        return np.broadcast_to(x, batch + x.shape[-2:])

    dO = rng.standard_normal(batch + (n, dv))
    O, lse, dQ, dkeys, dvalues = _dense(expand(Q, query_lead), [expand(k, key_lead) for k in keys],
                                        [expand(v, key_lead) for v in values], dO)
    O_got, state = ta.nway_attention_forward(Q, keys, values)
    np.testing.assert_allclose(O_got, O, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(state.lse, lse, rtol=1e-12, atol=1e-13)
    g = ta.nway_attention_backward(state, dO)

    def fold(x, lead):  # the adjoint of expand: sum over the broadcast axes and the group
        if lead[-1] != batch[-1] and lead[-1] > 1:
            x = x.reshape(x.shape[:len(batch) - 1] + (lead[-1], group) + x.shape[-2:]).sum(axis=len(batch))
        axes = tuple(i for i, (a, b) in enumerate(zip((1,) * (len(x.shape) - 2 - len(lead)) + lead,
                                                       x.shape[:-2])) if a == 1 and b > 1)
        x = x.sum(axis=axes, keepdims=True) if axes else x
        return x.reshape(lead + x.shape[-2:])

    np.testing.assert_allclose(g.dQ, fold(dQ, query_lead), rtol=1e-10, atol=1e-12)
    for a in range(t):
        np.testing.assert_allclose(g.dkeys[a], fold(dkeys[a], key_lead), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(g.dvalues[a], fold(dvalues[a], key_lead), rtol=1e-10, atol=1e-12)
    assert g.dQ.shape == Q.shape and all(x.shape == k.shape for x, k in zip(g.dkeys, keys))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("t", [1, 3])
def test_surrogate_with_grouped_heads_equals_repeated_keys(t, causal):
    """The surrogate on H = 4 query heads over Hk = 2 key heads gives what it gives on the keys
    and values repeated per head (each entry is computed alone; its key summaries are shared by
    its group), its gradients summed over the group, and the certified output and gradient bounds
    hold against the dense reference."""
    rng = np.random.default_rng([8, t, causal])
    n, d, dv = 5, 2, 2
    Q = rng.uniform(-1, 1, (4, n, d))
    keys = tuple(rng.uniform(-1, 1, (2, n, d)) for _ in range(t))
    values = tuple(rng.uniform(-1, 1, (2, n, dv)) for _ in range(t))
    dO = rng.uniform(-1, 1, (4, n, dv))
    repeat = (lambda x: np.repeat(x, 2, axis=0))
    options = dict(causal=causal, method="poly", degree=6)
    O, state = ta.nway_attention_forward(Q, keys, values, **options)
    O_rep, state_rep = ta.nway_attention_forward(Q, tuple(map(repeat, keys)), tuple(map(repeat, values)), **options)
    np.testing.assert_allclose(O, O_rep, rtol=1e-14, atol=1e-15)
    dense = _dense(Q, [repeat(k) for k in keys], [repeat(v) for v in values], dO, causal=causal)[0]
    assert np.all(np.abs(O - dense) <= state.certificate.output_bound)
    g, g_rep = ta.nway_attention_backward(state, dO), ta.nway_attention_backward(state_rep, dO)
    np.testing.assert_allclose(g.dQ, g_rep.dQ, rtol=1e-13, atol=1e-15)
    for a in range(t):
        for got, per_head in ((g.dkeys[a], g_rep.dkeys[a]), (g.dvalues[a], g_rep.dvalues[a])):
            np.testing.assert_allclose(got, per_head.reshape(2, 2, n, -1).sum(axis=1), rtol=1e-12, atol=1e-14)
    # the certified gradient bounds of the summed gradients hold against the dense exact gradients
    exact = _dense(Q, [repeat(k) for k in keys], [repeat(v) for v in values], dO, causal=causal)
    bounds = ta.nway_poly_gradient_bounds(state, dO)
    assert bounds.dQ.shape == Q.shape and all(b.shape == k.shape for b, k in zip(bounds.dkeys, keys))
    assert np.all(np.abs(g.dQ - exact[2]) <= bounds.dQ)
    for a in range(t):
        assert np.all(np.abs(g.dkeys[a] - exact[3][a].reshape(2, 2, n, d).sum(axis=1)) <= bounds.dkeys[a])
        assert np.all(np.abs(g.dvalues[a] - exact[4][a].reshape(2, 2, n, dv).sum(axis=1)) <= bounds.dvalues[a])
    # the sums' bounds cover at least the per-head bounds of the repeated layout, summed
    per_head = ta.nway_poly_gradient_bounds(state_rep, dO)
    assert np.all(bounds.dkeys[0] >= per_head.dkeys[0].reshape(2, 2, n, d).sum(axis=1))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("t", [1, 3])
def test_surrogate_gradient_bounds_with_a_broadcast_query(t, dtype):
    """One Q (n, d) over 3 key entries: dQ is the float64 sum of 3 copies' gradients, then cast;
    its certified bound (the copies' bounds, their sum's rounding, the cast) holds against the
    dense exact gradient, with near-constant values (the weights' error then barely cancels) and
    logits near the certified radius of degree 4."""
    rng = np.random.default_rng([9, t])
    n, d, dv = 6, 2, 2
    Q = rng.uniform(-1, 1, (n, d)).astype(dtype)
    keys = tuple(rng.uniform(-1, 1, (3, n, d)).astype(dtype) for _ in range(t))
    values = tuple((1.0 + 1e-3 * rng.uniform(-1, 1, (3, n, dv))).astype(dtype) for _ in range(t))
    dO = rng.uniform(-1, 1, (3, n, dv)).astype(dtype)
    O, state = ta.nway_attention_forward(Q, keys, values, scale=1.0, method="poly", degree=4)
    g = ta.nway_attention_backward(state, dO)
    bounds = ta.nway_poly_gradient_bounds(state, dO)
    exact = _dense(np.broadcast_to(Q, (3, n, d)), keys, values, dO, scale=1.0)
    assert bounds.dQ.shape == Q.shape
    assert np.all(np.abs(g.dQ.astype(np.float64) - exact[2].sum(axis=0)) <= bounds.dQ)
    for a in range(t):
        assert np.all(np.abs(g.dkeys[a].astype(np.float64) - exact[3][a]) <= bounds.dkeys[a])
        assert np.all(np.abs(g.dvalues[a].astype(np.float64) - exact[4][a]) <= bounds.dvalues[a])


@pytest.mark.parametrize("method,options", [("exact", {}), ("poly", {"degree": 6})])
@pytest.mark.parametrize("t", [1, 2])
def test_gpu_runs_t1_and_t2_on_the_tensor_attention_kernels(t, method, options):
    """device="cuda" (the simulator without a GPU) gives the CPU's results for t = 1 (as t = 2
    with a key set of ones and, causal, the window (1, n)) and t = 2, output and gradients, with
    grouped heads: the exact n-way results, and for the surrogate those of the same pair problem
    on the CPU (its plan is the tensor-attention plan), within its certified bound of the dense
    reference."""
    from tattn_numba import _cuda

    try:
        _cuda.require()
    except _cuda.CUDAUnavailableError as exc:  # pragma: no cover - depends on the environment
        pytest.skip(str(exc))
    rng = np.random.default_rng([11, t])
    n, d, dv = 4, 2, 2
    Q = rng.uniform(-1, 1, (2, n, d))
    keys = tuple(rng.uniform(-1, 1, (1, n, d)) for _ in range(t))
    values = tuple(rng.uniform(-1, 1, (1, n, dv)) for _ in range(t))
    dO = rng.uniform(-1, 1, (2, n, dv))
    O_gpu, state = ta.nway_attention_forward(Q, keys, values, causal=True, method=method, device="cuda", **options)
    if method == "exact":
        O_cpu, state_cpu = ta.nway_attention_forward(Q, keys, values, causal=True)
        g_cpu = ta.nway_attention_backward(state_cpu, dO)
    else:  # the CPU's n-way surrogate picks its own per-row polynomials: compare with the same pair problem
        pair = (Q, keys[0], keys[1], values[0], values[1]) if t == 2 else (
            Q, np.ones((1, n, d)), keys[0], np.ones((1, n, dv)), values[0])
        mask = {"causal": True} if t == 2 else {"window": (1, n)}
        O_cpu, pair_state = ta.attention_forward(*pair, method="poly", **mask, **options)
        g = ta.attention_backward(pair_state, dO)
        g_cpu = ta.NwayGrads(g.dQ, (g.dK1, g.dK2)[2 - t:], (g.dV1, g.dV2)[2 - t:])
    np.testing.assert_allclose(O_gpu, O_cpu, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(ta.nway_attention(Q, keys, values, causal=True, method=method, device="cuda", **options),
                               O_cpu, rtol=1e-11, atol=1e-13)
    g_gpu = ta.nway_attention_backward(state, dO)
    np.testing.assert_allclose(g_gpu.dQ, g_cpu.dQ, rtol=1e-10, atol=1e-12)
    for a in range(t):
        np.testing.assert_allclose(g_gpu.dkeys[a], g_cpu.dkeys[a], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(g_gpu.dvalues[a], g_cpu.dvalues[a], rtol=1e-10, atol=1e-12)
    if method == "poly":
        assert state.certificate.degree == 6
        assert np.all(np.abs(O_gpu - _dense(Q, [np.broadcast_to(k, (2, n, d)) for k in keys],
                                            [np.broadcast_to(v, (2, n, dv)) for v in values], dO,
                                            causal=True)[0]) <= state.certificate.output_bound)


def test_plain_lists_and_non_contiguous_operands():
    rng = np.random.default_rng(9)
    Q, keys, values, _ = _inputs(rng, (), 3, (2, 3, 2), 2, 2)
    want = ta.nway_attention(Q, keys, values)
    got = ta.nway_attention(Q.tolist(), [np.asfortranarray(k) for k in keys], list(values))
    np.testing.assert_allclose(got, want, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("t,which", [(3, "keys"), (3, "values"), (3, "Q"), (2, "keys"), (1, "values")])
def test_modified_input_is_detected(t, which):
    rng = np.random.default_rng(10)
    Q, keys, values, dO = _inputs(rng, (), 3, (3, 2, 2)[:t], 2, 2)
    _, state = ta.nway_attention_forward(Q, keys, values)
    target = {"Q": Q, "keys": keys[-1], "values": values[-1]}[which]
    target[0, 0] += 1.0
    name = "Q" if which == "Q" else f"{which}\\[{t - 1}\\]"
    with pytest.raises(ValueError, match=f"{name} was modified after nway_attention_forward"):
        ta.nway_attention_backward(state, dO)


def test_output_and_lse_are_private():
    """Modifying the returned O or state.lse in place does not change the gradients."""
    rng = np.random.default_rng(12)
    Q, keys, values, dO = _inputs(rng, (), 3, (2, 3, 2), 2, 2)
    O, state = ta.nway_attention_forward(Q, keys, values)
    want = ta.nway_attention_backward(state, dO)
    O += 5.0
    state.lse[:] = 0.0
    got = ta.nway_attention_backward(state, dO)
    assert np.array_equal(got.dQ, want.dQ)


def _ok(t=3):
    rng = np.random.default_rng(13)
    Q, keys, values, _ = _inputs(rng, (2,), 3, (3,) * t, 2, 2)
    return Q, keys, values


def _bad(change):
    Q, keys, values = _ok()
    args = {"Q": Q, "keys": keys, "values": values}
    kwargs = {}
    change(args, kwargs)
    return args, kwargs


BAD = [
    ("keys not a tuple", lambda a, k: a.update(keys=np.stack(a["keys"])), TypeError, "keys must be a tuple or list"),
    ("values not a tuple", lambda a, k: a.update(values=a["values"][0]), TypeError, "values must be a tuple or list"),
    ("key not an array", lambda a, k: a.update(keys=(a["keys"][0], None, a["keys"][2])), TypeError,
     r"keys\[1\] must be an array"),
    ("t = 0", lambda a, k: a.update(keys=(), values=()), ValueError, r"at least one array \(t >= 1\)"),
    ("len mismatch", lambda a, k: a.update(values=a["values"][:2]), ValueError,
     r"len\(keys\)=3 and len\(values\)=2"),
    ("m mismatch", lambda a, k: a.update(values=(a["values"][0], a["values"][1][..., :2, :], a["values"][2])),
     ValueError, r"values\[1\] must have shape \(\.\.\., m2=3, dv\)"),
    ("d mismatch", lambda a, k: a.update(keys=(a["keys"][0], a["keys"][1], np.ones((2, 3, 5)))), ValueError,
     r"keys\[2\] must have shape \(\.\.\., m3, d=2\)"),
    ("dv mismatch", lambda a, k: a.update(values=(a["values"][0], np.ones((2, 3, 4)), a["values"][2])), ValueError,
     r"values\[1\] must have shape \(\.\.\., m2, dv=2\)"),
    ("nan", lambda a, k: a["keys"][1].__setitem__((0, 0, 0), np.nan), ValueError, r"keys\[1\] contains NaN or Inf"),
    ("inf", lambda a, k: a["Q"].__setitem__((0, 0, 0), np.inf), ValueError, "Q contains NaN or Inf"),
    ("int dtype", lambda a, k: a.update(Q=np.ones((2, 3, 2), dtype=np.int64)), TypeError,
     "Q must have dtype float32 or float64, got int64"),
    ("mixed dtypes", lambda a, k: a.update(values=(a["values"][0].astype(np.float32),) + a["values"][1:]), TypeError,
     r"values\[0\] has dtype float32 but the other inputs are float64"),
    ("leading dims", lambda a, k: a.update(keys=(a["keys"][0][:1],) + a["keys"][1:]), ValueError,
     r"keys\[1\] has leading .* \(2,\) but keys\[0\] has \(1,\); every key and value set"),
    ("heads not a multiple", lambda a, k: a.update(Q=np.ones((3, 3, 2))), ValueError,
     r"Q has 3 query heads and the keys and values have 2 key/value heads .*multiple"),
    ("rank 1", lambda a, k: a.update(Q=np.ones(3)), ValueError, "Q must have at least 2 dimensions"),
    ("empty", lambda a, k: a.update(Q=np.ones((2, 0, 2))), ValueError, "Q must not be empty"),
    ("causal lengths", lambda a, k: (a.update(keys=(a["keys"][0], a["keys"][1][:, :2], a["keys"][2]),
                                              values=(a["values"][0], a["values"][1][:, :2], a["values"][2])),
                                     k.update(causal=True)), ValueError, r"n == m_a\), got n=3 and m=\(3, 2, 3\)"),
    ("causal type", lambda a, k: k.update(causal=1), TypeError, "causal must be a bool, got int"),
    ("scale", lambda a, k: k.update(scale=-1.0), ValueError, "scale must be positive and finite, got -1.0"),
    ("scale type", lambda a, k: k.update(scale="1"), TypeError, "scale must be a positive real number"),
    ("poly without tol or degree", lambda a, k: k.update(method="poly"), ValueError, "exactly one of tol"),
    ("cuda t=3", lambda a, k: k.update(device="cuda"), ValueError, r"device='cuda' runs n-way attention for t <= 2 .*t=3"),
    ("unknown method", lambda a, k: k.update(method="fast"), ValueError, r"unknown method 'fast'; expected one of"),
    ("method type", lambda a, k: k.update(method=1), TypeError, "method must be a string, got int"),
    ("unknown device", lambda a, k: k.update(device="tpu"), ValueError, r"unknown device 'tpu'"),
    ("huge logits", lambda a, k: (a["Q"].__setitem__((0, 0, 0), 1e200), a["keys"][0].__setitem__((0, 0, 0), 1e200)),
     ValueError, r"Q and keys are too large: the logits .* \(bound \d\.\d+e\+400"),
    ("huge products", lambda a, k: (a["Q"].__setitem__((0, 0, 0), 1e200), a["keys"][0].__setitem__((0, 0, 0), 1e200),
                                    [x.__setitem__((..., 0), 1e-300) for x in a["keys"][1:]]),
     ValueError, r"Q and keys are too large together: .* up to 1e\+400"),
]


@pytest.mark.parametrize("change,error,match", [pytest.param(c, e, m, id=i) for i, c, e, m in BAD])
def test_bad_inputs_raise_clear_errors(change, error, match):
    args, kwargs = _bad(change)
    with pytest.raises(error, match=match):
        ta.nway_attention(args["Q"], args["keys"], args["values"], **kwargs)
    with pytest.raises(error, match=match):
        ta.nway_attention_grad(args["Q"], args["keys"], args["values"], np.ones((2, 3, 2)), **kwargs)


def test_bad_upstream_and_state():
    Q, keys, values = _ok()
    _, state = ta.nway_attention_forward(Q, keys, values)
    with pytest.raises(ValueError, match=r"dO must have the output's shape \(2, 3, 2\)"):
        ta.nway_attention_backward(state, np.ones((2, 3, 3)))
    with pytest.raises(TypeError, match="dO has dtype float32 but the other inputs are float64"):
        ta.nway_attention_backward(state, np.ones((2, 3, 2), dtype=np.float32))
    with pytest.raises(TypeError, match="state must be the NwayState"):
        ta.nway_attention_backward(object(), np.ones((2, 3, 2)))


def test_memory_budget_is_enforced(monkeypatch):
    Q, keys, values = _ok()
    monkeypatch.setattr(config, "MEMORY_BUDGET_BYTES", 1000)
    with pytest.raises(ValueError, match="exact n-way forward and backward .*t=3.* above the memory budget"):
        ta.nway_attention_forward(Q, keys, values)
    with pytest.raises(ValueError, match="exact n-way forward .*above the memory budget"):
        ta.nway_attention(Q, keys, values)


@pytest.mark.parametrize("method", ["exact", "poly"])
def test_broadcast_query_copy_is_refused_before_it_is_allocated(monkeypatch, method):
    """Regression: a Q shared by every head was expanded to one entry per head before any memory
    check. A budget one byte below that copy now refuses, naming it (before: the kernel's estimate
    refused only after the copy existed)."""
    rng = np.random.default_rng(3)
    heads, n, m, d = 4, 40, 6, 3
    Q = 0.3 * rng.standard_normal((n, d))
    keys = tuple(0.3 * rng.standard_normal((heads, m, d)) for _ in range(3))  # t = 3: the n-way kernels
    values = tuple(0.3 * rng.standard_normal((heads, m, 2)) for _ in range(3))
    copy = heads * n * d * 8
    options = {"degree": 2} if method == "poly" else {}
    monkeypatch.setattr(config, "MEMORY_BUDGET_BYTES", copy - 1)
    expanded = r"Q expanded to every one of the 4 output entries \(n=40, d=3\).*memory budget"
    with pytest.raises(ValueError, match=expanded):
        ta.nway_attention(Q, keys, values, method=method, **options)
    if method == "poly":  # the surrogate's own budget applies to the copy too
        monkeypatch.setattr(config, "MEMORY_BUDGET_BYTES", 2**30)
        with pytest.raises(ValueError, match="expanded to every one of the 4 output entries"):
            ta.nway_poly_plan(Q, keys, values, degree=2, memory_budget=copy - 1)


def test_memory_estimate_grows_with_lengths_not_their_product():
    small = nway_cpu.memory_estimate(1, 1000, (1000, 1000, 1000), 8, 8, 8, 2).total
    assert small < 50 * 2**20  # the n×m1×m2×m3 tensor would be 8 TB
    assert nway_cpu.memory_estimate(1, 2000, (2000,) * 3, 8, 8, 8, 2).total > small


def test_float32_overflow_of_the_result_is_reported():
    rng = np.random.default_rng(14)
    Q, keys, values, _ = _inputs(rng, (), 2, (2, 2, 2), 2, 2, dtype=np.float32)
    big = tuple(np.full_like(v, 1e15) for v in values)
    with pytest.raises(ValueError, match="the result O overflows float32 although the inputs are finite"):
        ta.nway_attention(Q, keys, big)


def test_exports():
    for name in ("nway_attention", "nway_attention_grad", "nway_attention_forward", "nway_attention_backward",
                 "NwayGrads", "NwayState"):
        assert name in ta.__all__ and hasattr(ta, name)
