"""Plain dense reference for tensor attention (SPEC §1-§2), for tests only.

Everything here materialises the full (n, m1, m2) logit tensor with ``np.einsum`` and is written
as plainly as possible. It never imports the package under test: it is the ground truth.

By default the computation runs in float64 whatever the input dtype (float32 inputs are cast,
which is exact). ``dtype=np.float32`` instead runs the *same* formulas entirely in float32; that
"naive float32 implementation" is the yardstick of the float32 tolerance rule (see
``float32_tolerance`` below and the comment in test_attention_exact.py).
"""

from __future__ import annotations

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)
EPS64 = float(np.finfo(np.float64).eps)


def _cast(arrays, dtype):
    return [np.asarray(a).astype(dtype, copy=True) for a in arrays]


def default_scale(d: int) -> float:
    """SPEC §1: the default logit scale is 1/d."""
    return 1.0 / d


def causal_mask(n: int, m1: int, m2: int) -> np.ndarray:
    """Boolean (n, m1, m2) mask of allowed pairs: j1 <= i and j2 <= i."""
    i = np.arange(n)[:, None, None]
    j1 = np.arange(m1)[None, :, None]
    j2 = np.arange(m2)[None, None, :]
    return (j1 <= i) & (j2 <= i)


def dense_logits(Q, K1, K2, scale=None, dtype=np.float64):
    """logit[..., i, j1, j2] = scale * sum_l Q[i,l] K1[j1,l] K2[j2,l] (no mask)."""
    Q, K1, K2 = _cast((Q, K1, K2), dtype)
    if scale is None:
        scale = default_scale(Q.shape[-1])
    return dtype(scale) * np.einsum("...il,...jl,...kl->...ijk", Q, K1, K2)


def dense_probabilities(Q, K1, K2, scale=None, causal=False, dtype=np.float64):
    """Return (P, lse, logits) with P the softmax over the pair (j1, j2) for every row i.

    Stable softmax: subtract the row maximum before exponentiating. Masked pairs get P = 0.
    """
    S = dense_logits(Q, K1, K2, scale, dtype)
    if causal:
        n, m1, m2 = S.shape[-3:]
        S = np.where(causal_mask(n, m1, m2), S, dtype(-np.inf))
    row_max = S.max(axis=(-2, -1), keepdims=True)  # finite: pair (0, 0) is always allowed
    E = np.exp(S - row_max)
    Z = E.sum(axis=(-2, -1), keepdims=True)
    P = E / Z
    lse = (np.log(Z) + row_max)[..., 0, 0]
    return P, lse, S


def dense_attention(Q, K1, K2, V1, V2, scale=None, causal=False, dtype=np.float64):
    """Dense tensor attention (SPEC §1). Returns ``(O, lse)``.

    O[..., i, m] = sum_{j1, j2} P[..., i, j1, j2] V1[..., j1, m] V2[..., j2, m];
    lse[..., i] = log sum_{allowed j1, j2} exp(logit[..., i, j1, j2]).
    """
    V1, V2 = _cast((V1, V2), dtype)
    P, lse, _ = dense_probabilities(Q, K1, K2, scale, causal, dtype)
    O = np.einsum("...ijk,...jm,...km->...im", P, V1, V2)
    return O, lse


def dense_attention_grad(Q, K1, K2, V1, V2, dO, scale=None, causal=False, dtype=np.float64):
    """Hand-written backward of SPEC §2. Returns ``(dQ, dK1, dK2, dV1, dV2)``.

    delta[i]      = sum_m dO[i,m] O[i,m]
    dS[i,j1,j2]   = sum_m dO[i,m] V1[j1,m] V2[j2,m]
    dZ            = P * (dS - delta)
    dQ  = s sum dZ K1 K2,  dK1 = s sum dZ Q K2,  dK2 = s sum dZ Q K1
    dV1 = sum P dO V2,     dV2 = sum P dO V1
    """
    Q, K1, K2, V1, V2, dO = _cast((Q, K1, K2, V1, V2, dO), dtype)
    s = dtype(default_scale(Q.shape[-1]) if scale is None else scale)
    P, _, _ = dense_probabilities(Q, K1, K2, scale, causal, dtype)
    O = np.einsum("...ijk,...jm,...km->...im", P, V1, V2)
    delta = np.einsum("...im,...im->...i", dO, O)
    dS = np.einsum("...im,...jm,...km->...ijk", dO, V1, V2)
    dZ = P * (dS - delta[..., None, None])
    dQ = s * np.einsum("...ijk,...jl,...kl->...il", dZ, K1, K2)
    dK1 = s * np.einsum("...ijk,...il,...kl->...jl", dZ, Q, K2)
    dK2 = s * np.einsum("...ijk,...il,...jl->...kl", dZ, Q, K1)
    dV1 = np.einsum("...ijk,...im,...km->...jm", P, dO, V2)
    dV2 = np.einsum("...ijk,...im,...jm->...km", P, dO, V1)
    return dQ, dK1, dK2, dV1, dV2


def dense_magnitudes(Q, K1, K2, V1, V2, dO=None, scale=None, causal=False):
    """Componentwise sums of absolute values of the terms in each output (float64).

    The standard error bound of a floating-point sum is (number of terms)·eps·Σ|terms|, so these
    give a principled per-entry tolerance scale that survives cancellation (e.g. dQ = 0 exactly when
    V1 ∘ V2 is constant, while the computed value is rounding noise). Returns a dict with keys
    "O", "lse", and, when ``dO`` is given, "dQ", "dK1", "dK2", "dV1", "dV2". Also "logit", the
    largest sum of absolute logit terms (the absolute error of a float64 logit is ~eps times it,
    which becomes a relative error of P).
    """
    Q, K1, K2, V1, V2 = _cast((Q, K1, K2, V1, V2), np.float64)
    s = default_scale(Q.shape[-1]) if scale is None else float(scale)
    P, lse, _ = dense_probabilities(Q, K1, K2, scale, causal)
    aQ, aK1, aK2, aV1, aV2 = (np.abs(x) for x in (Q, K1, K2, V1, V2))
    out = {}
    out["O"] = np.einsum("...ijk,...jm,...km->...im", P, aV1, aV2)
    logit_abs = s * np.einsum("...il,...jl,...kl->...ijk", aQ, aK1, aK2)
    out["logit"] = float(logit_abs.max())
    out["lse"] = np.abs(lse) + 1.0
    if dO is not None:
        adO = np.abs(np.asarray(dO, dtype=np.float64))
        O = np.einsum("...ijk,...jm,...km->...im", P, V1, V2)
        delta_abs = np.einsum("...im,...im->...i", adO, np.abs(O))
        dS_abs = np.einsum("...im,...jm,...km->...ijk", adO, aV1, aV2)
        dZ_abs = P * (dS_abs + delta_abs[..., None, None])
        out["dQ"] = s * np.einsum("...ijk,...jl,...kl->...il", dZ_abs, aK1, aK2)
        out["dK1"] = s * np.einsum("...ijk,...il,...kl->...jl", dZ_abs, aQ, aK2)
        out["dK2"] = s * np.einsum("...ijk,...il,...jl->...kl", dZ_abs, aQ, aK1)
        out["dV1"] = np.einsum("...ijk,...im,...km->...jm", P, adO, aV2)
        out["dV2"] = np.einsum("...ijk,...im,...jm->...km", P, adO, aV1)
    return out


def central_difference_gradient(f, x, h=1e-3):
    """Gradient of the scalar function ``f`` at ``x`` by the 5-point central stencil.

    ``g[k] ≈ (-f(x+2h e_k) + 8 f(x+h e_k) - 8 f(x-h e_k) + f(x-2h e_k)) / (12 h)``: truncation error
    O(h^4), rounding error O(eps |f| / h); with h = 1e-3 and O(1) inputs both are ~1e-12.
    ``x`` is a float64 array; it is not modified.
    """
    x = np.array(x, dtype=np.float64, copy=True)
    g = np.empty_like(x)
    flat = x.reshape(-1)
    gflat = g.reshape(-1)
    for k in range(flat.size):
        old = flat[k]
        vals = []
        for step in (2.0, 1.0, -1.0, -2.0):
            flat[k] = old + step * h
            vals.append(float(f(x.copy())))
        flat[k] = old
        gflat[k] = (-vals[0] + 8.0 * vals[1] - 8.0 * vals[2] + vals[3]) / (12.0 * h)
    return g


def central_difference_directional(f, x, direction, h=1e-3):
    """Directional derivative of scalar ``f`` at ``x`` along ``direction`` (5-point stencil)."""
    x = np.asarray(x, dtype=np.float64)
    v = np.asarray(direction, dtype=np.float64)
    vals = [float(f(x + step * h * v)) for step in (2.0, 1.0, -1.0, -2.0)]
    return (-vals[0] + 8.0 * vals[1] - 8.0 * vals[2] + vals[3]) / (12.0 * h)


def float32_tolerance(ref64, naive32, magnitude, c=2.0, floor=4.0, logit=0.0):
    """Per-entry tolerance for a float32 result (FlashAttention's rule plus an absolute floor).

    ``c * max|naive32 - ref64| + floor * eps32 * (1 + logit) * magnitude``: an implementation must be
    at most ``c`` times worse than the plain float32 NumPy implementation (same formulas, float32
    throughout), and is always allowed a few float32 ulps of the natural magnitude of the entry
    (rounding the float64 result to float32 alone costs half an ulp), times 1 + L where ``logit``
    is L, the largest sum of absolute logit terms: a float32 logit is rounded at ~eps32·L, a
    relative error of every weight P that any float32 computation of the logits shares (the plain
    implementation's own error can be luckily small on inputs with exactly representable products,
    which hypothesis finds).
    """
    naive_err = float(np.max(np.abs(np.asarray(naive32, np.float64) - ref64))) if np.size(ref64) else 0.0
    return c * naive_err + floor * EPS32 * (1.0 + logit) * np.asarray(magnitude, dtype=np.float64)


# --------------------------------------------------------------------------------------------
# Comparison helpers shared by the test modules (they only use the reference above).
# --------------------------------------------------------------------------------------------

#: float64 rule: |actual - ref| <= RTOL64 * (1 + L) * magnitude, entrywise, where magnitude is the
#: sum of absolute terms (dense_magnitudes) and L the largest sum of absolute logit terms. A float64
#: logit carries an absolute error ~ d·eps·L, which becomes a relative error of P; sums of at most
#: m1·m2 terms add ~ m1·m2·eps. 1e-11 (≈ 45 000 eps) covers both with room, and is still ~1e9
#: times smaller than any real bug (wrong mask, wrong scale, a dropped tile, a race).
RTOL64 = 1e-11


def make_inputs(rng, batch, n, m1, m2, d, dv, dtype=np.float64, magnitude=1.0, with_dO=False):
    """Random standard-normal inputs (times ``magnitude``) of the given shapes and dtype."""
    batch = tuple(batch)
    shapes = [(n, d), (m1, d), (m2, d), (m1, dv), (m2, dv)]
    if with_dO:
        shapes.append((n, dv))
    return [(magnitude * rng.standard_normal(batch + s)).astype(dtype) for s in shapes]


#: Entries whose terms all underflow (P = exp(-huge) = 0 in the reference) have magnitude 0; a kernel
#: whose exp is clamped from below may return ~1e-300 there. Every entry is therefore allowed
#: FLOOR_REL times the largest magnitude of its array (far below anything a real bug produces).
#: An absolute floor too, for arrays whose magnitude is zero altogether (e.g. V1 = 0): values below
#: ABS_FLOOR are treated as zero.
FLOOR_REL = 1e-14
ABS_FLOOR = 1e-200


def _violation(actual, ref, tol, magnitude=None):
    tol = tol + ABS_FLOOR
    if magnitude is not None and np.size(magnitude):
        tol = tol + FLOOR_REL * float(np.max(magnitude))
    err = np.abs(np.asarray(actual, dtype=np.float64) - ref)
    bad = err > tol
    if not bad.any():
        return None
    k = np.unravel_index(np.argmax(err - tol), err.shape)
    return (
        f"{int(bad.sum())}/{err.size} entries out of tolerance; worst at {k}: "
        f"actual={np.asarray(actual)[k]!r} ref={ref[k]!r} err={err[k]:.3e} tol={np.broadcast_to(tol, err.shape)[k]:.3e}"
    )


def assert_forward_matches(O, lse, Q, K1, K2, V1, V2, scale=None, causal=False):
    """Check an implementation's (O, lse) against the dense reference with the dtype's rule."""
    O = np.asarray(O)
    refO, reflse = dense_attention(Q, K1, K2, V1, V2, scale, causal)
    mags = dense_magnitudes(Q, K1, K2, V1, V2, None, scale, causal)
    L = mags["logit"]
    lse_mag = 1.0 + L + np.abs(reflse)
    assert O.shape == refO.shape, (O.shape, refO.shape)
    assert np.all(np.isfinite(O)), "output has non-finite entries"
    if O.dtype == np.float64:
        tolO = RTOL64 * (1.0 + L) * mags["O"]
        tol_lse = RTOL64 * lse_mag
    else:
        naiveO, naivelse = dense_attention(Q, K1, K2, V1, V2, scale, causal, dtype=np.float32)
        tolO = float32_tolerance(refO, naiveO, mags["O"], logit=L)
        tol_lse = float32_tolerance(reflse, naivelse, lse_mag)
    msg = _violation(O, refO, tolO, mags["O"])
    assert msg is None, "O: " + msg
    if lse is not None:
        lse = np.asarray(lse)
        assert lse.shape == reflse.shape, (lse.shape, reflse.shape)
        assert lse.dtype == np.float64, lse.dtype
        msg = _violation(lse, reflse, tol_lse, lse_mag)
        assert msg is None, "lse: " + msg


GRAD_NAMES = ("dQ", "dK1", "dK2", "dV1", "dV2")


def assert_grads_match(grads, Q, K1, K2, V1, V2, dO, scale=None, causal=False):
    """Check the five gradients against the hand-written dense backward with the dtype's rule."""
    refs = dense_attention_grad(Q, K1, K2, V1, V2, dO, scale, causal)
    mags = dense_magnitudes(Q, K1, K2, V1, V2, dO, scale, causal)
    L = mags["logit"]
    naive = None
    for name, g, ref, inp in zip(GRAD_NAMES, grads, refs, (Q, K1, K2, V1, V2)):
        g = np.asarray(g)
        assert g.shape == np.shape(inp), (name, g.shape, np.shape(inp))
        assert g.dtype == np.asarray(inp).dtype, (name, g.dtype)
        assert np.all(np.isfinite(g)), f"{name} has non-finite entries"
        if g.dtype == np.float64:
            tol = RTOL64 * (1.0 + L) * mags[name]
        else:
            if naive is None:
                naive = dict(zip(GRAD_NAMES, dense_attention_grad(Q, K1, K2, V1, V2, dO, scale, causal, np.float32)))
            tol = float32_tolerance(ref, naive[name], mags[name], logit=L)
        msg = _violation(g, ref, tol, mags[name])
        assert msg is None, f"{name}: " + msg
