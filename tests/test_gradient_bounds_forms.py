"""The surrogate's certified gradient bounds for the other forms of attention: grouped key/value
heads (key and value gradients summed over each group), a broadcast Q (its gradient summed over
the copies) and determinant logits (gradients pulled back through the ±1 lift), alone, composed,
with causal masks and sliding windows, in float64 and float32 (tattn_numba/poly/plan.py
``gradient_bounds``; derivation in docs/surrogate.md, "Grouped heads, broadcast queries,
determinant logits").

Both entry points, ``poly_gradient_bounds(state, dO)`` and ``poly_plan(..., dO=dO)``, must bound
|surrogate gradient − exact gradient| entrywise. The exact gradients come from a dense
reference written here in extended precision (np.longdouble): grouped keys repeated per query
head, the determinant written as Σ_c q_c·(k1_c × k2_c) with its gradients through the cross
products (no lift), sums back over groups and broadcast axes. The only allowance is 1e-12 of the
bound plus 1e-17 of the largest exact entry (the reference's own rounding, about 1e-19 of its
summed magnitudes). The cases are those where the promise is weakest (logits at the radius,
near-constant values, a single key pair, large float32 magnitudes, cancelling group members,
cancelling determinant chunks) plus hypothesis over layouts, forms and masks; a tightness check
keeps the bounds from becoming useless.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tattn_numba as ta
from tattn_numba import config
from tattn_numba.poly import exp_approx

LD = np.longdouble
FIELDS = ta.AttentionGrads._fields


# ----------------------------------------------------------------------------- the reference

def _allowed(n, m1, m2, causal, window):
    """Boolean (n, m1, m2) mask: all pairs, j1, j2 <= i, or i − w < j <= i per key set."""
    i = np.arange(n)[:, None, None]
    j1 = np.arange(m1)[None, :, None]
    j2 = np.arange(m2)[None, None, :]
    if window is not None:
        w1, w2 = window
        return (j1 <= i) & (j1 > i - w1) & (j2 <= i) & (j2 > i - w2)
    if causal:
        return (j1 <= i) & (j2 <= i)
    return np.ones((n, m1, m2), dtype=bool)


def _cross(a, b):
    """a × b over the last axis (length 3), written out."""
    return np.stack([a[..., 1] * b[..., 2] - a[..., 2] * b[..., 1],
                     a[..., 2] * b[..., 0] - a[..., 0] * b[..., 2],
                     a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]], axis=-1)


def _field(x, y, logits):
    """F[..., a, b, :] with logit/s = ⟨z, F(x_a, y_b)⟩ for the third operand z in cyclic order
    (z = q for (x, y) = (k1, k2), k1 for (k2, q), k2 for (q, k1)): x_a ∘ y_b for trilinear logits;
    for the determinant, x_c × y_c on every 3-chunk (q·(a × b) is cyclic) and x ∘ y on the rest."""
    xa, yb = x[..., :, None, :], y[..., None, :, :]
    if logits == "trilinear":
        return xa * yb
    d = x.shape[-1]
    parts = [_cross(xa[..., 3 * c:3 * c + 3], yb[..., 3 * c:3 * c + 3]) for c in range(d // 3)]
    return np.concatenate(parts + [xa[..., 3 * (d // 3):] * yb[..., 3 * (d // 3):]], axis=-1)


def _layout(q_lead, k_lead):
    """Padded leading shapes of Q and of the keys, the group size and the output's leading shape."""
    rank = max(len(q_lead), len(k_lead))
    q = (1,) * (rank - len(q_lead)) + tuple(q_lead)
    k = (1,) * (rank - len(k_lead)) + tuple(k_lead)
    group = q[-1] // k[-1] if rank and 1 < k[-1] < q[-1] else 1
    repeated = k[:-1] + (k[-1] * group,) if group > 1 else k
    return q, k, group, tuple(np.broadcast_shapes(q, repeated))


def _expand(x, padded, group, batch):
    x = x.reshape(padded + x.shape[-2:])
    if group > 1:  # query head h reads key head h // group
        x = np.repeat(x, group, axis=len(padded) - 1)
    return np.broadcast_to(x, batch + x.shape[-2:])


def _reduce(g, padded, group, shape):
    """Sum the gradient of the expanded operand back onto the operand: groups, then broadcast axes."""
    rank = len(padded)
    if group > 1:
        g = g.reshape(g.shape[:rank - 1] + (padded[-1], group) + g.shape[rank:]).sum(axis=rank)
    axes = tuple(a for a in range(rank) if padded[a] == 1 and g.shape[a] != 1)
    return g.sum(axis=axes, keepdims=True).reshape(shape)


def reference_grads(Q, K1, K2, V1, V2, dO, *, scale=None, logits="trilinear", causal=False, window=None):
    """Exact (dQ, dK1, dK2, dV1, dV2) in np.longdouble, shaped like the operands (SPEC §2 over
    the full (n, m1, m2) tensor; default scale 1/d of the caller's d)."""
    ops = [np.asarray(x).astype(LD) for x in (Q, K1, K2, V1, V2, dO)]
    q_pad, k_pad, group, batch = _layout(Q.shape[:-2], K1.shape[:-2])
    Qx = _expand(ops[0], q_pad, 1, batch)
    K1x, K2x, V1x, V2x = (_expand(x, k_pad, group, batch) for x in ops[1:5])
    dOx = ops[5].reshape(batch + dO.shape[-2:])
    n, d = Q.shape[-2:]
    s = LD(1.0 / d if scale is None else scale)
    mask = _allowed(n, K1.shape[-2], K2.shape[-2], causal, window)
    S = np.where(mask, s * np.einsum("...il,...jkl->...ijk", Qx, _field(K1x, K2x, logits)), -np.inf)
    E = np.where(mask, np.exp(S - S.max(axis=(-2, -1), keepdims=True)), 0)
    P = E / E.sum(axis=(-2, -1), keepdims=True)
    O = np.einsum("...ijk,...jm,...km->...im", P, V1x, V2x)
    delta = np.einsum("...im,...im->...i", dOx, O)
    dZ = P * (np.einsum("...im,...jm,...km->...ijk", dOx, V1x, V2x) - delta[..., None, None])
    grads = (s * np.einsum("...ijk,...jkl->...il", dZ, _field(K1x, K2x, logits)),
             s * np.einsum("...ijk,...kil->...jl", dZ, _field(K2x, Qx, logits)),
             s * np.einsum("...ijk,...ijl->...kl", dZ, _field(Qx, K1x, logits)),
             np.einsum("...ijk,...im,...km->...jm", P, dOx, V2x),
             np.einsum("...ijk,...im,...jm->...km", P, dOx, V1x))
    pads = (q_pad,) + (k_pad,) * 4
    groups = (1, group, group, group, group)
    return tuple(_reduce(g, p, gr, x.shape) for g, p, gr, x in zip(grads, pads, groups, (Q, K1, K2, V1, V2)))


def test_reference_agrees_with_the_exact_method():
    """The reference against method="exact" (float64) on every form at once."""
    rng = np.random.default_rng(0)
    Q = rng.uniform(-1, 1, (2, 4, 5, 7))
    K1, K2 = rng.uniform(-1, 1, (1, 2, 5, 7)), rng.uniform(-1, 1, (1, 2, 5, 7))
    V1, V2 = rng.uniform(-1, 1, (1, 2, 5, 2)), rng.uniform(-1, 1, (1, 2, 5, 2))
    dO = rng.standard_normal((2, 4, 5, 2))
    for form in ({"logits": "determinant", "window": (2, 3)}, {"causal": True}, {}):
        exact = ta.attention_grad(Q, K1, K2, V1, V2, dO, **form)
        for name, g, ref in zip(FIELDS, exact, reference_grads(Q, K1, K2, V1, V2, dO, **form)):
            np.testing.assert_allclose(g, ref.astype(np.float64), rtol=1e-12, atol=1e-14, err_msg=f"{name} {form}")


# ----------------------------------------------------------------------------- the check

def check(X, *, form=None, **options):
    """Surrogate gradients within both certified bounds; returns {name: (max error, max bound)}."""
    Q, K1, K2, V1, V2, dO = X
    form = form or {}
    _, state = ta.attention_forward(Q, K1, K2, V1, V2, method="poly", **form, **options)
    grads = ta.attention_backward(state, dO)
    after = ta.poly_gradient_bounds(state, dO)
    prior = ta.poly_plan(Q, K1, K2, V1, V2, dO=dO, **form, **options).gradient_bounds
    exact = reference_grads(Q, K1, K2, V1, V2, dO, scale=options.get("scale"), **form)
    seen = {}
    for name, g, ref, b_after, b_prior in zip(FIELDS, grads, exact, after, prior):
        assert g.shape == ref.shape == b_after.shape == b_prior.shape, (name, g.shape, b_after.shape, b_prior.shape)
        assert np.all(np.isfinite(b_after)) and np.all(np.isfinite(b_prior)), name
        error = np.abs(g.astype(LD) - ref)
        slack = LD(1e-17) * np.max(np.abs(ref)) + LD(1e-300)
        for which, bound in (("poly_gradient_bounds", b_after), ("poly_plan(dO=)", b_prior)):
            over = error > bound.astype(LD) * LD(1 + 1e-12) + slack
            assert not over.any(), (
                f"{which} {name} {form} {options}: {int(over.sum())} entries over, worst error "
                f"{float(error[over].max()):.3g} against bound {float(bound[over].min()):.3g}")
        seen[name] = (float(error.max()), float(b_after.max()))
    return seen


def _uniform(rng, shape, bound=1.0, dtype=np.float64):
    return rng.uniform(-bound, bound, shape).astype(dtype)


def _operands(rng, q_lead, k_lead, n, m1, m2, d, dv, bound=1.0, dtype=np.float64):
    """Q, K1, K2, V1, V2 uniform in [−bound, bound] and dO in [−1, 1], in ``dtype``."""
    batch = _layout(q_lead, k_lead)[3]
    return [_uniform(rng, q_lead + (n, d), bound, dtype), _uniform(rng, k_lead + (m1, d), bound, dtype),
            _uniform(rng, k_lead + (m2, d), bound, dtype), _uniform(rng, k_lead + (m1, dv), bound, dtype),
            _uniform(rng, k_lead + (m2, dv), bound, dtype), _uniform(rng, batch + (n, dv), 1.0, dtype)]


LAYOUTS = {
    "grouped 8/1": ((8,), (1,)),
    "grouped 4/2 batch": ((2, 4), (2, 2)),
    "broadcast Q": ((), (3,)),
    "broadcast Q, grouped": ((1, 4), (3, 2)),
    "broadcast keys": ((2, 3), (3,)),
}


# ----------------------------------------------------------------------------- tightness

@pytest.mark.parametrize("logits", ["trilinear", "determinant"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_bounds_hold_and_are_not_absurdly_loose_on_benign_inputs(layout, logits):
    """Low degree: the polynomial error dominates rounding by far, so the observed error is a
    fair yardstick; every gradient's largest bound is within 1e6 of its largest error."""
    q_lead, k_lead = LAYOUTS[layout]
    rng = np.random.default_rng(len(layout))
    X = _operands(rng, q_lead, k_lead, 5, 4, 3, 4, 2)
    seen = check(X, form={"logits": logits}, degree=2)
    for name, (error, bound) in seen.items():
        assert error > 1e-9, (name, error)  # far above float64's rounding floor
        assert bound <= 1e6 * error, (layout, logits, name, bound / error)


@pytest.mark.parametrize("window", [None, (2, 3)])
def test_bounds_not_absurdly_loose_with_masks_and_float32(window):
    rng = np.random.default_rng(3)
    form = {"logits": "determinant", "causal": True} if window is None else {"window": window}
    X = _operands(rng, (2, 4), (2, 2), 6, 6, 6, 3, 2, dtype=np.float32)
    for name, (error, bound) in check(X, form=form, degree=2).items():
        assert error > 1e-6 and bound <= 1e6 * error, (window, name, error, bound)


# ----------------------------------------------------------------------------- adversarial

def _edge_operands(rng, q_lead, k_lead, n, m, logits, radius, dtype=np.float64):
    """Every logit within 0.1% of −R_i (the lower edge of the certified interval), near-constant
    values: d = 1 with unit keys, or for the determinant d = 3 with k1 = e0, k2 = e1 and
    q = −c·e2, whose lifted radius s·|q2| is attained."""
    batch = _layout(q_lead, k_lead)[3]
    d = 1 if logits == "trilinear" else 3
    Q = np.zeros(q_lead + (n, d))
    Q[..., -1] = -rng.uniform(0.999, 1.0, q_lead + (n,))
    K1, K2 = np.zeros(k_lead + (m, d)), np.zeros(k_lead + (m, d))
    K1[..., 0] = 1.0
    K2[..., 1 if d == 3 else 0] = 1.0
    V1 = 1.0 + 1e-5 * rng.standard_normal(k_lead + (m, 2))
    V2 = 1.0 + 1e-5 * rng.standard_normal(k_lead + (m, 2))
    dO = rng.standard_normal(batch + (n, 2))
    return [x.astype(dtype) for x in (Q, K1, K2, V1, V2, dO)], radius


@pytest.mark.parametrize("logits", ["trilinear", "determinant"])
@pytest.mark.parametrize("radius", [4.0, 8.0])
@pytest.mark.parametrize("layout", ["grouped 8/1", "broadcast Q, grouped"])
def test_logits_at_the_radius_edge_with_near_constant_values(layout, radius, logits):
    q_lead, k_lead = LAYOUTS[layout]
    X, R = _edge_operands(np.random.default_rng(1), q_lead, k_lead, 6, 6, logits, radius)
    tol = 1e-5 if radius < 6 else 1e-2  # determinant at R = 8 and tol=1e-5: refused (rounding floor 3e-4)
    check(X, form={"logits": logits}, scale=R, tol=tol)
    check(X, form={"logits": logits, "causal": True}, scale=R, tol=tol)


@pytest.mark.parametrize("logits", ["trilinear", "determinant"])
def test_single_key_pair(logits):
    """m1 = m2 = 1: P = 1, so the exact dQ, dK1, dK2 are 0 and only rounding is left; logits at −R."""
    for q_lead, k_lead in (LAYOUTS["grouped 8/1"], LAYOUTS["broadcast Q"]):
        X, R = _edge_operands(np.random.default_rng(2), q_lead, k_lead, 5, 1, logits, 6.0)
        X[3] = np.random.default_rng(3).standard_normal(X[3].shape)
        degree = exp_approx.min_degree("chebyshev", R, 0.5)
        check(X, form={"logits": logits}, scale=R, degree=degree)
        check(X, form={"logits": logits}, scale=R, degree=degree + 6)


def test_float32_with_large_magnitudes():
    """Entries of Q, K up to 40 (scale keeps the radius near 3), values and dO near 1e3 and 1e2:
    the float32 cast of gradients of size ~1e5 dominates the bounds."""
    rng = np.random.default_rng(4)
    for q_lead, k_lead in (LAYOUTS["grouped 8/1"], LAYOUTS["broadcast Q, grouped"]):
        for logits in ("trilinear", "determinant"):
            X = _operands(rng, q_lead, k_lead, 6, 6, 6, 3, 3, bound=40.0, dtype=np.float32)
            X[3] = (1e3 * X[3] / 40.0).astype(np.float32)
            X[4] = (1e3 + X[4]).astype(np.float32)
            X[5] = (1e2 * X[5]).astype(np.float32)
            for form in ({"logits": logits}, {"logits": logits, "window": (3, 2)}):
                check(X, form=form, scale=3.0 / (3 * 40.0**3), degree=10)


def test_eight_query_heads_over_one_key_head_with_cancelling_contributions():
    """Heads 4–7 repeat heads 0–3 with dO negated (up to 1e-7): the exact key and value
    gradients are sums of eight terms that cancel to ~1e-7 of each."""
    rng = np.random.default_rng(5)
    for logits in ("trilinear", "determinant"):
        Q, K1, K2, V1, V2, dO = _operands(rng, (8,), (1,), 6, 6, 6, 3, 2, bound=1.2)
        Q[4:] = Q[:4]
        dO[4:] = -dO[:4] * (1.0 + 1e-7 * rng.standard_normal(dO[:4].shape))
        for form in ({"logits": logits}, {"logits": logits, "causal": True}):
            check([Q, K1, K2, V1, V2, dO], form=form, degree=8)
        Qc = Q[:, :5].copy()
        K = rng.uniform(-1.2, 1.2, (1, 5, 3))
        Vc = rng.uniform(-1, 1, (1, 5, 2))
        dOc = dO[:, :5].copy()
        check([Qc, K, K.copy(), Vc, Vc.copy(), dOc], form={"logits": logits, "window": (2, 4)}, degree=8)


def test_broadcast_query_with_cancelling_copies():
    """Q (n, d) shared by eight key entries that are equal, with dO of the copies cancelling to
    1e-7: the exact dQ is a sum of eight nearly cancelling terms."""
    rng = np.random.default_rng(6)
    for logits in ("trilinear", "determinant"):
        Q = rng.uniform(-1.5, 1.5, (5, 3))
        K1, K2 = (np.broadcast_to(rng.uniform(-1.5, 1.5, (5, 3)), (8, 5, 3)).copy() for _ in range(2))
        V1, V2 = (np.broadcast_to(rng.uniform(-1, 1, (5, 2)), (8, 5, 2)).copy() for _ in range(2))
        dO = rng.standard_normal((8, 5, 2))
        dO[4:] = -dO[:4] * (1.0 + 1e-7 * rng.standard_normal(dO[:4].shape))
        check([Q, K1, K2, V1, V2, dO], form={"logits": logits}, degree=5)
        check([Q, K1, K2, V1, V2, dO], form={"logits": logits, "causal": True}, degree=5)


def test_determinant_with_cancelling_chunks():
    """d = 6: chunk 1 is chunk 0 with k1 and k2 swapped, so the two determinants cancel and every
    logit is ~1e-3 of the radius; then k2 ≈ k1 (each determinant and each pulled-back dQ
    coordinate a difference of nearly equal lifted terms)."""
    rng = np.random.default_rng(7)
    for q_lead, k_lead in (LAYOUTS["grouped 8/1"], LAYOUTS["broadcast Q, grouped"]):
        Q, K1, K2, V1, V2, dO = _operands(rng, q_lead, k_lead, 6, 6, 6, 6, 2, bound=1.0)
        Q[..., 3:] = Q[..., :3]
        K1[..., 3:], K2[..., 3:] = K2[..., :3], K1[..., :3]
        K1[..., 3:] += 1e-3 * rng.standard_normal(K1[..., 3:].shape)
        for form in ({}, {"causal": True}, {"window": (2, 5)}):
            check([Q, K1, K2, V1, V2, dO], form=dict(form, logits="determinant"), degree=5)
        K2 = K1 + 1e-6 * rng.standard_normal(K1.shape)
        check([Q, K1, K2, V1, V2, dO], form={"logits": "determinant"}, degree=5)


def test_chunked_scans_with_groups(monkeypatch):
    """Chunks of 2 rows: the grouped backward adds the query summaries chunk by chunk."""
    monkeypatch.setattr(config, "POLY_CHUNK_ROWS", 2)
    rng = np.random.default_rng(8)
    X = _operands(rng, (2, 4), (2, 1), 7, 7, 7, 3, 2)
    for form in ({}, {"causal": True}, {"window": (3, 2)}, {"logits": "determinant", "window": (1, 4)}):
        check(X, form=form, degree=5)


# ----------------------------------------------------------------------------- hypothesis

@st.composite
def forms(draw):
    """A layout (grouped, broadcast Q, broadcast keys, or both), a logit form, a mask, a dtype and
    a degree or tolerance, on small shapes."""
    hk = draw(st.sampled_from([1, 2]))
    group = draw(st.sampled_from([1, 2, 4, 8]))
    batch = draw(st.sampled_from([1, 2]))
    q_lead = draw(st.sampled_from([(hk * group,), (batch, hk * group), (1, hk * group)]))
    k_lead = draw(st.sampled_from([(hk,), (batch, hk), (), (batch, 1)]))
    logits = draw(st.sampled_from(["trilinear", "determinant"]))
    d = draw(st.integers(1, 4 if logits == "trilinear" else 7))
    mask = draw(st.sampled_from(["full", "causal", "window"]))
    n = draw(st.integers(1, 5))
    m1, m2 = (n, n) if mask != "full" else (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    form = {"logits": logits}
    if mask == "causal":
        form["causal"] = True
    elif mask == "window":
        form["window"] = (draw(st.integers(1, n + 1)), draw(st.integers(1, n + 1)))
    width = d if logits == "trilinear" else 6 * (d // 3) + d % 3
    params = {"n": n, "m1": m1, "m2": m2, "d": d, "dv": draw(st.integers(1, 3)), "q_lead": q_lead,
              "k_lead": k_lead, "bound": draw(st.sampled_from([0.5, 1.0, 1.8])),
              "dtype": draw(st.sampled_from([np.float64, np.float32])), "chunk": draw(st.sampled_from([2, 8192]))}
    options = {"family": draw(st.sampled_from(["chebyshev", "taylor"]))}
    if width > 3 or draw(st.booleans()):  # rank C(width + g, g) at most about 1000: a few ms per call
        options["degree"] = draw(st.integers(1, max(g for g in range(1, 8) if math.comb(width + g, g) <= 1000)))
    else:
        options["tol"] = draw(st.sampled_from([1e-2, 1e-4] if params["dtype"] == np.float32 else [1e-3, 1e-6, 1e-9]))
    return params, form, options, draw(st.integers(0, 2**32 - 1))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(forms())
def test_bounds_hold_on_drawn_layouts_forms_and_masks(case):
    params, form, options, seed = case
    p = dict(params)
    chunk, old = p.pop("chunk"), config.POLY_CHUNK_ROWS
    rng = np.random.default_rng(seed)
    X = _operands(rng, p.pop("q_lead"), p.pop("k_lead"), p["n"], p["m1"], p["m2"], p["d"], p["dv"],
                  bound=p["bound"], dtype=p["dtype"])
    config.POLY_CHUNK_ROWS = chunk
    try:
        check(X, form=form, **options)
    except ValueError as error:  # a refusal must name its cause (tol or degree)
        assert "tol" in str(error) or "degree" in str(error), str(error)
    finally:
        config.POLY_CHUNK_ROWS = old
