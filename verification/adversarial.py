"""Structured hostile inputs for the surrogate's certificates, and a seeded search over them.

The promise under test (docs/user_guide/certificates.rst): for every input that
``method="poly"`` accepts (it may refuse with ``ValueError``), every entry of
|surrogate − exact| is at most its certified bound, for the output
(``state.certificate.output_bound`` and the a-priori ``poly_plan(...).output_bound``), for the
five gradients (``poly_gradient_bounds(state, dO)`` and ``poly_plan(..., dO=dO).gradient_bounds``)
and for the theory paper's loss, output, dLoss/dX and dLoss/dY (``paper.poly_certificate``).
Random inputs rarely come near a bound; the inputs below are built to:

* logits at the edges of each row's certified interval: all at −R_i (``upper_fraction=0``), all
  at +R_i (``1``), half and half (``0.5``), one key row at +R_i (``1/m2``); ``jitter`` is how far
  inside (0: constant keys, every logit of a row equal);
* values that are nearly constant (``1 + 1e-5·noise``: a tiny spread, so a tiny certified bound),
  exactly constant, or carry a large common offset (``1e6 + noise``: a large output, a small
  spread);
* a single key pair (m1 = m2 = 1, so O = V1 ∘ V2 exactly), m1 = 1 or m2 = 1;
* float32 inputs with tolerances near float32 resolution, causal masks, both polynomial
  families, fixed degrees up to ``max_degree(d)``.

Each generator returns ``(Q, K1, K2, V1, V2, dO, options)``; ``options`` are the keyword
arguments of ``tattn_numba.attention_forward(..., method="poly", **options)`` (``scale``,
``causal``, ``family`` and one of ``tol``/``degree``). :func:`search` runs seeded cases through
the public API and returns the worst entrywise error/bound ratio per certified quantity.

The reference is independent of the package: a dense computation in ``np.longdouble`` (80-bit
extended precision on x86, about 2000× finer than float64) with pairwise sums, or, for constant
keys (every attention weight of a row equal, any n, causal or not), closed forms with
compensated prefix sums. An entry counts as exceeded when

    |surrogate − reference| − reference_slack > bound·(1 + 1e-12) + 1e-300,

where ``reference_slack`` = C·eps(longdouble)·(sum of the magnitudes of the terms of that
entry) covers only the reference's own rounding (C grows with d, the logit radius and the
number of terms; about 1e-17 of the magnitudes). Where ``np.longdouble`` is float64 the slack
is correspondingly larger.
"""

from __future__ import annotations

import math
import time

import numpy as np

import tattn_numba as ta
from tattn_numba import paper

# The per-kind generators (lower_edge, …) are created by the globals().update below.
__all__ = [  # noqa: F822
    "KINDS", "GRADIENTS", "QUANTITIES", "PAPER_QUANTITIES", "build", "sample_params", "generate",
    "lower_edge", "upper_edge", "half_half", "near_constant_values", "constant_values", "large_offset",
    "single_pair", "single_key1", "single_key2", "constant_keys", "float32_tight", "causal",
    "random_entries", "max_degree", "reference", "evaluate", "build_paper", "evaluate_paper",
    "search", "describe",
]

LD = np.longdouble
EPS_LD = float(np.finfo(np.longdouble).eps)

GRADIENTS = ("dQ", "dK1", "dK2", "dV1", "dV2")
#: a-posteriori bounds (state / poly_gradient_bounds) and a-priori ones (poly_plan(..., dO=dO)).
QUANTITIES = ("O",) + GRADIENTS + ("plan.O",) + tuple(f"plan.{g}" for g in GRADIENTS)
PAPER_QUANTITIES = ("paper.loss", "paper.output", "paper.grad_X", "paper.grad_Y")

RADII = (0.25, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 15.0, 16.0, 18.0)
TOLS64 = (1e-2, 1e-4, 1e-6, 1e-9, 1e-12, 1e-14)
TOLS32 = (1e-3, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9)
#: largest rank C(d + g, g) the search's fixed degrees use (keeps a case at milliseconds)
RANK_CAP = 3000
DEGREE_CAP = 80

KINDS = ("lower_edge", "upper_edge", "half_half", "near_constant_values", "constant_values", "large_offset",
         "single_pair", "single_key1", "single_key2", "constant_keys", "float32_tight", "causal",
         "random_entries", "paper")


# --------------------------------------------------------------------------------------------
# generators
# --------------------------------------------------------------------------------------------

def max_degree(d: int, rank_cap: int = RANK_CAP, cap: int = DEGREE_CAP) -> int:
    """Largest degree g <= cap whose rank C(d + g, g) is at most rank_cap."""
    g = 0
    while g < cap and math.comb(d + g + 1, g + 1) <= rank_cap:
        g += 1
    return g


def _values(rng, kind: str, m: int, dv: int, *, offset: float, noise: float, value_scale: float = 1e2) -> np.ndarray:
    if kind == "random":
        return rng.uniform(-1.0, 1.0, (m, dv))
    if kind == "near_constant":  # spread ~noise: a tiny certified bound
        return 1.0 + noise * rng.standard_normal((m, dv))
    if kind == "constant":  # zero spread: the exact-arithmetic bound is 0, only rounding is left
        return np.full((m, dv), 1.1)
    if kind == "offset":  # a large output with a small spread
        return offset + rng.uniform(-1.0, 1.0, (m, dv))
    if kind == "neg_offset":
        return -offset + rng.uniform(-1.0, 1.0, (m, dv))
    if kind == "large":  # a large spread: a tol forces a tiny κ, below the rounding of long causal scans
        return value_scale * rng.standard_normal((m, dv))
    raise ValueError(f"unknown values kind {kind!r}")


def build(rng, *, n: int = 8, m1: int | None = None, m2: int | None = None, d: int = 2, dv: int = 2,
          radius: float = 4.0, logits: str = "edge", upper_fraction: float = 0.0, jitter: float = 1e-3,
          row_spread: float = 0.0, magnitudes: str = "balanced", constant_keys: bool = False,
          values1: str = "random", values2: str = "random", offset: float = 1e6, noise: float = 1e-5,
          value_scale: float = 1e2, dO: str = "random",
          dtype: str = "float64", causal: bool = False, family: str = "chebyshev", tol: float | None = None,
          degree: int | None = None, **_ignored):
    """Arrays and options of one structured case.

    logits="edge": every logit of row i within a factor (1 − jitter)² of ±R_i, R_i = radius·(1 −
    row_spread·u_i) (the row's certified radius: |Q[i, l]| is the same in every column and every
    |K1[j, l]|, |K2[j, l]| is within jitter of its column maximum, so the ℓ∞ and the Hölder radius
    coincide); a fraction ``upper_fraction`` of the K2 rows (or, with m2 = 1, of the K1 rows) is
    flipped to +R_i. logits="random": entries uniform in [−1, 1], scaled so that the global
    radius is ``radius``. ``constant_keys`` makes every K1 row equal to the first and every K2 row
    equal to the first. Values (``values1``, ``values2``): "random" uniform in [−1, 1],
    "near_constant" 1 + noise·N(0, 1), "constant" 1.1, "offset"/"neg_offset" ±offset + U(−1, 1),
    "large" value_scale·N(0, 1). ``dtype`` "float32" rounds the arrays (and the scale) to float32.

    Returns ``(Q, K1, K2, V1, V2, dO, options)``.
    """
    if causal:
        m1 = m2 = n
    m1 = n if m1 is None else m1
    m2 = n if m2 is None else m2
    if logits == "edge":
        if magnitudes == "balanced":
            a = b = q = 1.0
        else:  # unbalanced magnitudes, same radius
            a, b = 10.0 ** rng.uniform(-1.5, 1.5, 2)
            q = 10.0 ** rng.uniform(-1.5, 1.5)
        s1 = rng.choice([-1.0, 1.0], d)
        s2 = rng.choice([-1.0, 1.0], d)
        K1 = s1 * a * (1.0 - jitter * rng.random((m1, d)))
        K2 = s2 * b * (1.0 - jitter * rng.random((m2, d)))
        rows = q * (1.0 - row_spread * rng.random(n))
        Q = -(s1 * s2)[None, :] * rows[:, None]  # every logit near −R_i
        flip = int(round(upper_fraction * (m2 if m2 > 1 else m1)))
        target = K2 if m2 > 1 else K1
        if flip:
            target[rng.permutation(target.shape[0])[:flip]] *= -1.0
        scale = radius / (d * q * a * b)
    elif logits == "random":
        Q, K1, K2 = rng.uniform(-1, 1, (n, d)), rng.uniform(-1, 1, (m1, d)), rng.uniform(-1, 1, (m2, d))
        glob = float(np.sum(np.abs(Q).max(0) * np.abs(K1).max(0) * np.abs(K2).max(0)))
        scale = radius / max(glob, 1e-300)
    else:
        raise ValueError(f"unknown logits kind {logits!r}")
    if constant_keys:  # every key row equal: uniform weights in every row, the exact dQ is 0
        K1[:] = K1[0]
        K2[:] = K2[0]
    V1 = _values(rng, values1, m1, dv, offset=offset, noise=noise, value_scale=value_scale)
    V2 = _values(rng, values2, m2, dv, offset=offset, noise=noise, value_scale=value_scale)
    dO_ = rng.standard_normal((n, dv)) if dO == "random" else np.ones((n, dv))
    np_dtype = np.dtype(dtype)
    scale = float(np.float32(scale))  # exactly representable in both dtypes: no ambiguity about s
    arrays = tuple(np.ascontiguousarray(x, dtype=np_dtype) for x in (Q, K1, K2, V1, V2, dO_))
    options = {"scale": scale, "causal": bool(causal), "family": family}
    if degree is not None:
        options["degree"] = int(degree)
    else:
        options["tol"] = float(1e-6 if tol is None else tol)
    return arrays + (options,)


def _pick(rng, seq):
    return seq[int(rng.integers(len(seq)))]


def _common(rng, *, dtype="float64", causal=None, tiny=False) -> dict:
    d = int(rng.integers(1, 5))
    n = int(rng.integers(1, 7 if tiny else 11))
    p = {"d": d, "dv": int(rng.integers(1, 4)), "n": n, "m1": int(rng.integers(1, 9)),
         "m2": int(rng.integers(1, 9)), "radius": float(_pick(rng, RADII)),
         "family": _pick(rng, ("chebyshev", "taylor")), "dtype": dtype,
         "causal": bool(rng.random() < 0.3) if causal is None else causal,
         "jitter": float(_pick(rng, (0.0, 1e-6, 1e-3, 1e-2, 0.1))),
         "row_spread": float(_pick(rng, (0.0, 0.0, 0.5))),
         "magnitudes": _pick(rng, ("balanced", "balanced", "unbalanced")),
         "upper_fraction": 0.0, "logits": "edge", "values1": "random", "values2": "random",
         "dO": _pick(rng, ("random", "random", "ones"))}
    if rng.random() < 0.5:
        p["degree"] = int(rng.integers(1, max_degree(d) + 1)) if rng.random() < 0.8 else max_degree(d)
    else:
        p["tol"] = float(_pick(rng, TOLS32 if dtype == "float32" else TOLS64))
    return p


def sample_params(kind: str, rng) -> dict:
    """Random parameters of ``build`` for one structure kind (see KINDS)."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {list(KINDS)}")
    p = _common(rng)
    if kind == "lower_edge":
        p["values1"] = p["values2"] = _pick(rng, ("random", "near_constant"))
    elif kind == "upper_edge":
        p["upper_fraction"] = 1.0
    elif kind == "half_half":
        p["upper_fraction"] = float(_pick(rng, (0.5, 0.25, 1.0 / max(p["m2"], 1))))
    elif kind == "near_constant_values":
        p["values1"] = "near_constant"
        p["values2"] = _pick(rng, ("near_constant", "constant", "random"))
        p["noise"] = float(_pick(rng, (1e-5, 1e-8, 1e-3)))
        p["upper_fraction"] = float(_pick(rng, (0.0, 0.0, 0.5, 1.0)))
    elif kind == "constant_values":
        p["values1"] = p["values2"] = "constant"
        p["upper_fraction"] = float(_pick(rng, (0.0, 0.5, 1.0)))
    elif kind == "large_offset":
        p["values1"] = _pick(rng, ("offset", "neg_offset"))
        p["values2"] = _pick(rng, ("offset", "random", "near_constant"))
        p["offset"] = float(_pick(rng, (1e3, 1e6, 1e8)))
        p["radius"] = float(_pick(rng, (0.25, 1.0, 4.0, 8.0)))
        if "tol" in p:
            p["tol"] = float(_pick(rng, (1e-6, 1e-9, 1e-12)))
    elif kind == "single_pair":
        p.update(m1=1, m2=1, causal=False, values1=_pick(rng, ("random", "near_constant", "offset")))
        p["upper_fraction"] = float(_pick(rng, (0.0, 1.0)))
    elif kind == "single_key1":
        p.update(m1=1, causal=False)
        p["values1"] = _pick(rng, ("random", "near_constant"))
    elif kind == "single_key2":
        p.update(m2=1, causal=False)
        p["values2"] = _pick(rng, ("random", "near_constant"))
    elif kind == "constant_keys":
        p["jitter"] = 0.0
        p["constant_keys"] = True
        p["logits"] = _pick(rng, ("edge", "random"))
        p["upper_fraction"] = float(_pick(rng, (0.0, 1.0)))
        p["values1"] = p["values2"] = _pick(rng, ("random", "large", "near_constant"))
        p["value_scale"] = float(_pick(rng, (1e1, 1e2, 1e3)))
        if rng.random() < 0.3:  # large n: the closed-form reference
            p["n"] = int(_pick(rng, (64, 256, 1024)))
            p["m1"] = p["m2"] = p["n"] if p["causal"] else int(_pick(rng, (1, 16, 128)))
    elif kind == "float32_tight":
        p = _common(rng, dtype="float32")
        p.pop("degree", None)
        p["tol"] = float(_pick(rng, TOLS32))
        p["values1"] = _pick(rng, ("random", "near_constant"))
        p["upper_fraction"] = float(_pick(rng, (0.0, 0.5, 1.0)))
    elif kind == "causal":
        p["causal"] = True
        p["upper_fraction"] = float(_pick(rng, (0.0, 0.5, 1.0)))
        p["values1"] = _pick(rng, ("random", "near_constant"))
    elif kind == "random_entries":
        p["logits"] = "random"
        p["values1"] = p["values2"] = _pick(rng, ("random", "random", "large"))
        p["value_scale"] = float(_pick(rng, (1e1, 1e2, 1e3)))
    elif kind == "paper":
        p.update(d=int(rng.integers(1, 3)), n=int(rng.integers(1, 7)), causal=False)
        p.pop("m1"), p.pop("m2")
        p["dv"] = p["d"]
        p["values1"] = p["values2"] = _pick(rng, ("random", "near_constant", "offset"))
        p["offset"] = float(_pick(rng, (1e2, 1e4)))
        p["upper_fraction"] = float(_pick(rng, (0.0, 0.0, 0.5, 1.0)))
        p["w_noise"] = float(_pick(rng, (0.0, 0.0, 0.1)))
        if "degree" in p:
            p["degree"] = int(rng.integers(1, max_degree(p["d"] ** 2) + 1))
    if p["causal"]:
        p["m1"] = p["m2"] = p["n"]
    p["kind"] = kind
    return p


def generate(kind: str, seed: int = 0, **overrides):
    """One seeded case of ``kind``: ``(Q, K1, K2, V1, V2, dO, options)`` (paper: see build_paper)."""
    rng = np.random.default_rng([seed, KINDS.index(kind)])
    params = sample_params(kind, rng)
    params.update(overrides)
    if kind == "paper":
        return build_paper(np.random.default_rng([seed, 1 + KINDS.index(kind)]), **params)
    return build(np.random.default_rng([seed, 1 + KINDS.index(kind)]), **params)


def _named(kind):
    """The public generator of one kind: ``generator(seed=0, **overrides)`` is
    ``generate(kind, seed, **overrides)``."""
    def generator(seed: int = 0, **overrides):
        return generate(kind, seed, **overrides)
    generator.__name__ = kind
    generator.__doc__ = f"Seeded ``{kind}`` case: ``(Q, K1, K2, V1, V2, dO, options)``; keywords override ``build``."
    return generator


# One module-level generator per kind of ``build`` case (``adversarial.lower_edge(seed)``, …);
# "paper" cases go through build_paper, and the name ``paper`` is the imported module.
globals().update({kind: _named(kind) for kind in KINDS if kind != "paper"})


def describe(params: dict) -> str:
    """A one-line description of a case's parameters."""
    keys = ("kind", "n", "m1", "m2", "d", "dv", "radius", "logits", "upper_fraction", "jitter", "row_spread",
            "magnitudes", "constant_keys", "values1", "values2", "offset", "noise", "value_scale", "dtype", "causal", "family", "tol", "degree",
            "w_noise", "retry", "seed")
    return ", ".join(f"{k}={params[k]}" for k in keys if k in params)


# --------------------------------------------------------------------------------------------
# independent references (np.longdouble)
# --------------------------------------------------------------------------------------------

def _sum(terms):
    """Pairwise sum over the last (contiguous) axis and the sum of the magnitudes."""
    terms = np.ascontiguousarray(terms)
    return terms.sum(axis=-1), np.abs(terms).sum(axis=-1)


def _dense_reference(Q, K1, K2, V1, V2, dO, scale, causal, dO_mag=None):
    Q, K1, K2, V1, V2, dO = (np.asarray(x).astype(LD) for x in (Q, K1, K2, V1, V2, dO))
    s = LD(scale)
    n, d = Q.shape
    m1, m2, dv = K1.shape[0], K2.shape[0], V1.shape[1]
    K = m1 * m2
    kk = (K1[:, None, :] * K2[None, :, :]).reshape(K, d)
    logit, logit_mag = _sum(Q[:, None, :] * kk[None, :, :])
    logit, logit_mag = s * logit, abs(s) * logit_mag
    if causal:
        j1 = np.repeat(np.arange(m1), m2)
        j2 = np.tile(np.arange(m2), m1)
        allowed = (j1[None, :] <= np.arange(n)[:, None]) & (j2[None, :] <= np.arange(n)[:, None])
    else:
        allowed = np.ones((n, K), dtype=bool)
    masked = np.where(allowed, logit, LD(-np.inf))
    E = np.where(allowed, np.exp(masked - masked.max(axis=1, keepdims=True)), LD(0))
    P = E / E.sum(axis=1, keepdims=True)
    w = (V1[:, None, :] * V2[None, :, :]).reshape(K, dv)
    wt = np.ascontiguousarray(w.T)
    O, O_mag = _sum(P[:, None, :] * wt[None, :, :])
    dS, dS_mag = _sum(dO[:, None, :] * w[None, :, :])          # (n, K)
    delta, delta_mag = _sum(dO * O)                           # (n,)
    adO = np.abs(dO) if dO_mag is None else np.asarray(dO_mag).astype(LD)
    dS_mag = adO @ np.abs(wt) if dO_mag is not None else dS_mag
    delta_mag = (adO * O_mag).sum(axis=1)
    dZ = P * (dS - delta[:, None])
    dZ_mag = P * (dS_mag + delta_mag[:, None])
    kkt = np.ascontiguousarray(kk.T)
    dQ = s * (dZ[:, None, :] * kkt[None]).sum(-1)
    dQ_mag = abs(s) * (dZ_mag[:, None, :] * np.abs(kkt)[None]).sum(-1)
    dZ3, dZ3_mag, P3 = dZ.reshape(n, m1, m2), dZ_mag.reshape(n, m1, m2), P.reshape(n, m1, m2)
    # dK1[j1, l] = s Σ_{i,j2} dZ[i,j1,j2] Q[i,l] K2[j2,l]: terms (m1, d, n, m2)
    t = np.einsum("ijk,il,kl->jlik", dZ3, Q, K2).reshape(m1, d, n * m2)
    dK1 = s * t.sum(-1)
    dK1_mag = abs(s) * np.einsum("ijk,il,kl->jlik", dZ3_mag, np.abs(Q), np.abs(K2)).reshape(m1, d, n * m2).sum(-1)
    t = np.einsum("ijk,il,jl->klij", dZ3, Q, K1).reshape(m2, d, n * m1)
    dK2 = s * t.sum(-1)
    dK2_mag = abs(s) * np.einsum("ijk,il,jl->klij", dZ3_mag, np.abs(Q), np.abs(K1)).reshape(m2, d, n * m1).sum(-1)
    t = np.einsum("ijk,im,km->jmik", P3, dO, V2).reshape(m1, dv, n * m2)
    dV1, _ = _sum(t)
    dV1_mag = np.einsum("ijk,im,km->jmik", P3, adO, np.abs(V2)).reshape(m1, dv, n * m2).sum(-1)
    t = np.einsum("ijk,im,jm->kmij", P3, dO, V1).reshape(m2, dv, n * m1)
    dV2, _ = _sum(t)
    dV2_mag = np.einsum("ijk,im,jm->kmij", P3, adO, np.abs(V1)).reshape(m2, dv, n * m1).sum(-1)
    rmax = float(logit_mag.max()) if logit_mag.size else 0.0
    ulps = 4.0 * ((d + 2) * max(rmax, 1.0) + 2.0 * math.log2(K * n + 1) + 8.0)
    return {"O": O, "dQ": dQ, "dK1": dK1, "dK2": dK2, "dV1": dV1, "dV2": dV2}, \
        {"O": O_mag, "dQ": dQ_mag, "dK1": dK1_mag, "dK2": dK2_mag, "dV1": dV1_mag, "dV2": dV2_mag}, ulps


def _kahan_cumsum(x, reverse=False):
    """Compensated cumulative sum along axis 0 (error ~2 eps per entry, not n eps)."""
    x = x[::-1] if reverse else x
    out = np.empty_like(x)
    total = np.zeros_like(x[0])
    comp = np.zeros_like(x[0])
    for i in range(x.shape[0]):
        y = x[i] - comp
        t = total + y
        comp = (t - total) - y
        total = t
        out[i] = total
    return out[::-1] if reverse else out


def _constant_key_reference(Q, K1, K2, V1, V2, dO, scale, causal):
    """Closed forms when every K1 row and every K2 row is the same (uniform weights per row)."""
    Q, K1, K2, V1, V2, dO = (np.asarray(x).astype(LD) for x in (Q, K1, K2, V1, V2, dO))
    s = LD(scale)
    n, d = Q.shape
    m1, m2 = K1.shape[0], K2.shape[0]
    k1, k2 = K1[0], K2[0]
    if causal:
        A1, A1m = _kahan_cumsum(V1), _kahan_cumsum(np.abs(V1))
        A2, A2m = _kahan_cumsum(V2), _kahan_cumsum(np.abs(V2))
        c1 = c2 = np.arange(1, n + 1, dtype=LD)
    else:
        A1 = np.broadcast_to(V1.sum(0), (n, V1.shape[1]))
        A1m = np.broadcast_to(np.abs(V1).sum(0), A1.shape)
        A2 = np.broadcast_to(V2.sum(0), (n, V2.shape[1]))
        A2m = np.broadcast_to(np.abs(V2).sum(0), A2.shape)
        c1, c2 = np.full(n, LD(m1)), np.full(n, LD(m2))
    inv = 1 / (c1 * c2)
    O = A1 * A2 * inv[:, None]
    O_mag = A1m * A2m * inv[:, None]
    adO = np.abs(dO)
    delta = (dO * O).sum(1)
    delta_mag = (adO * O_mag).sum(1)

    def over_i(x):  # Σ over the rows i that see key row j (i >= j causal, all otherwise), per key row j
        if causal:
            return _kahan_cumsum(x, reverse=True)
        return x.sum(0)

    def key_rows(x, m):
        return x if causal else np.broadcast_to(x, (m,) + x.shape)

    dV1 = key_rows(over_i(dO * A2 * inv[:, None]), m1)
    dV1_mag = key_rows(over_i(adO * A2m * inv[:, None]), m1)
    dV2 = key_rows(over_i(dO * A1 * inv[:, None]), m2)
    dV2_mag = key_rows(over_i(adO * A1m * inv[:, None]), m2)

    def key_gradient(V, A, A_mag, c, k, m):
        # dK1[j1,l] = s k2_l [Σ_m V1[j1,m] G[j1,l,m] − H[j1,l]],  G = Σ_i Q[i,l] dO[i,m] A2[i,m]/(c1c2),
        #             H = Σ_i Q[i,l] c2 δ_i/(c1c2)   (i over the rows that see j1);
        # called with the other key's A, A_mag, c, k (dK2 likewise with 1 and 2 swapped).
        G = key_rows(over_i(Q[:, :, None] * (dO * A * inv[:, None])[:, None, :]), m)
        Gm = key_rows(over_i(np.abs(Q)[:, :, None] * (adO * A_mag * inv[:, None])[:, None, :]), m)
        H = key_rows(over_i(Q * (c * delta * inv)[:, None]), m)
        Hm = key_rows(over_i(np.abs(Q) * (c * delta_mag * inv)[:, None]), m)
        return (s * k[None, :] * ((V[:, None, :] * G).sum(-1) - H),
                abs(s) * np.abs(k)[None, :] * ((np.abs(V)[:, None, :] * Gm).sum(-1) + Hm))

    dK1, dK1_mag = key_gradient(V1, A2, A2m, c2, k2, m1)
    dK2, dK2_mag = key_gradient(V2, A1, A1m, c1, k1, m2)
    dQ = np.zeros((n, d), dtype=LD)  # uniform weights: Σ dZ = 0 in every row, exactly
    dQ_mag = np.zeros((n, d), dtype=LD)
    ulps = 64.0 + 4.0 * math.log2(n + 1)
    return {"O": O, "dQ": dQ, "dK1": dK1, "dK2": dK2, "dV1": dV1, "dV2": dV2}, \
        {"O": O_mag, "dQ": dQ_mag, "dK1": dK1_mag, "dK2": dK2_mag, "dV1": dV1_mag, "dV2": dV2_mag}, ulps


#: cases with more (query, key pair) triples than this use the closed forms (constant keys) or are skipped
DENSE_LIMIT = 60_000


def reference(Q, K1, K2, V1, V2, dO, *, scale, causal=False, dO_mag=None):
    """Independent extended-precision reference: ``(values, magnitudes, ulps)``.

    ``values`` maps "O", "dQ", "dK1", "dK2", "dV1", "dV2" to np.longdouble arrays; ``magnitudes``
    the sums of the absolute values of each entry's terms; the reference's own error is at most
    about ``ulps·eps(longdouble)·magnitude``. Constant keys use closed forms (any n); otherwise a
    dense computation (n·m1·m2 <= DENSE_LIMIT, else ``ValueError``).
    """
    constant = (np.all(np.asarray(K1) == np.asarray(K1)[:1]) and np.all(np.asarray(K2) == np.asarray(K2)[:1])
                and dO_mag is None)
    n, m1, m2 = Q.shape[0], K1.shape[0], K2.shape[0]
    if constant:
        return _constant_key_reference(Q, K1, K2, V1, V2, dO, scale, causal)
    if n * m1 * m2 > DENSE_LIMIT:
        raise ValueError(f"no reference for n·m1·m2 = {n * m1 * m2} > {DENSE_LIMIT} with non-constant keys")
    return _dense_reference(Q, K1, K2, V1, V2, dO, scale, causal, dO_mag)


# --------------------------------------------------------------------------------------------
# checking
# --------------------------------------------------------------------------------------------

def _ratio(approx, exact, bound, slack):
    """Worst entrywise (excess error)/bound, the entry and whether a bound is exceeded."""
    approx = np.asarray(approx).astype(LD)
    bound = np.asarray(bound, dtype=np.float64)
    error = np.abs(approx - exact)
    excess = np.maximum(error - slack, 0).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(bound > 0, excess / np.where(bound > 0, bound, 1.0), np.where(excess > 0, np.inf, 0.0))
    exceeded = excess > bound * (1 + 1e-12) + 1e-300
    k = int(np.argmax(ratio)) if ratio.size else 0
    idx = np.unravel_index(k, ratio.shape) if ratio.size else ()
    return {"ratio": float(ratio.flat[k]) if ratio.size else 0.0,
            "error": float(error.flat[k]) if ratio.size else 0.0,
            "bound": float(bound.flat[k]) if ratio.size else 0.0,
            "max_error": float(error.max()) if ratio.size else 0.0,
            "max_bound": float(bound.max()) if ratio.size else 0.0,
            "entry": [int(i) for i in idx], "exceeded": int(exceeded.sum()), "entries": int(exceeded.size)}


def _refusal_names_cause(message: str) -> bool:
    return "tol" in message or "degree" in message


def evaluate(Q, K1, K2, V1, V2, dO, options: dict, *, plan: bool = True) -> dict:
    """Run one case through the public API and compare every certified quantity.

    Returns {"refused": message} when ``attention_forward`` raises ``ValueError``; otherwise
    {"quantities": {name: ratio record}, "violations": [...]} with a ratio record per entry of
    QUANTITIES (``_ratio``: worst ratio, its error and bound, number of exceeded entries).
    """
    dtype = Q.dtype
    try:
        O, state = ta.attention_forward(Q, K1, K2, V1, V2, method="poly", **options)
    except ValueError as refusal:
        return {"refused": str(refusal), "names_cause": _refusal_names_cause(str(refusal))}
    violations = []
    grads = ta.attention_backward(state, dO)
    gbounds = ta.poly_gradient_bounds(state, dO)
    if O.dtype != dtype:
        violations.append(f"output dtype {O.dtype} for {dtype} inputs")
    for name, g in zip(GRADIENTS, grads):
        if g.dtype != dtype:
            violations.append(f"{name} dtype {g.dtype} for {dtype} inputs")
    values, mags, ulps = reference(Q, K1, K2, V1, V2, dO, scale=options["scale"], causal=options["causal"])
    result = {}
    approx = dict(zip(("O",) + GRADIENTS, (O,) + tuple(grads)))
    post = dict(zip(("O",) + GRADIENTS, (state.certificate.output_bound,) + tuple(gbounds)))
    for name in ("O",) + GRADIENTS:
        result[name] = _ratio(approx[name], values[name], post[name], ulps * EPS_LD * mags[name])
    if plan:
        try:
            prior = ta.poly_plan(Q, K1, K2, V1, V2, dO=dO, **options)
        except ValueError as refusal:
            violations.append(f"poly_plan refused what attention_forward accepted: {refusal}")
        else:
            pb = dict(zip(("O",) + GRADIENTS, (prior.output_bound,) + tuple(prior.gradient_bounds)))
            for name in ("O",) + GRADIENTS:
                result[f"plan.{name}"] = _ratio(approx[name], values[name], pb[name], ulps * EPS_LD * mags[name])
    certificate = state.certificate
    return {"quantities": result, "violations": violations, "degree": int(certificate.degree),
            "rank": int(certificate.rank), "radius_max": float(np.max(certificate.radius))}


# --------------------------------------------------------------------------------------------
# the theory paper's problem
# --------------------------------------------------------------------------------------------

def build_paper(rng, *, w_noise: float = 0.0, **params):
    """Structured inputs of ``paper.poly_certificate``: ``(A1, A2, A3, A4, A5, E, X, Y, options)``.

    A1, A2, A3 are ``build``'s Q, K1, K2 (n = m1 = m2, so the paper's logits, at its fixed scale
    1/d, sit where ``build`` put them: W_Q = s·d·I, W_K1 = W_K2 = I, plus ``w_noise``); A4, A5 are
    its V1, V2 (value width d).
    """
    params = dict(params)
    params.update(causal=False, dv=params.get("d", 2))
    n = params.get("n", 4)
    params["m1"] = params["m2"] = n
    Q, K1, K2, V1, V2, dO, options = build(rng, **params)
    d = Q.shape[1]
    dtype = Q.dtype
    s = options.pop("scale")
    options.pop("causal")
    eye = np.eye(d)
    W_Q = s * d * eye + w_noise * rng.standard_normal((d, d))
    W_K1 = eye + w_noise * rng.standard_normal((d, d))
    W_K2 = eye + w_noise * rng.standard_normal((d, d))
    W_V1 = eye + w_noise * rng.standard_normal((d, d))
    W_V2 = eye + w_noise * rng.standard_normal((d, d))
    X = paper.build_X(W_Q, W_K1, W_K2).astype(dtype)
    Y = paper.build_Y(W_V1, W_V2).astype(dtype)
    E = rng.uniform(-1, 1, (n, d)).astype(dtype)
    return Q, K1, K2, V1, V2, E, X, Y, options


def _paper_reference(A1, A2, A3, A4, A5, E, X, Y):
    """Loss, output, dLoss/dX, dLoss/dY of SPEC §3 in extended precision, via the reduced attention."""
    A1, A2, A3, A4, A5, E, X, Y = (np.asarray(a).astype(LD) for a in (A1, A2, A3, A4, A5, E, X, Y))
    n, d = A1.shape
    Qp = A1 @ X  # its rounding (d·eps relative) acts like a logit error: inside the dense reference's ulps
    K1p = np.repeat(A2, d, axis=1)          # K1'[j,(b,c)] = A2[j,b]
    K2p = np.tile(A3, (1, d))               # K2'[j,(b,c)] = A3[j,c]
    V1p, V2p = np.repeat(A4, d, axis=1), np.tile(A5, (1, d))
    ones = np.zeros((n, d * d), dtype=LD)
    vals, mags, ulps = _dense_reference(Qp, K1p, K2p, V1p, V2p, ones, 1.0 / d, False)
    Op, Op_mag = vals["O"], mags["O"]
    out = Op @ Y
    out_mag = Op_mag @ np.abs(Y)
    c = out - E
    c_mag = out_mag + np.abs(E)
    loss = 0.5 * float((c * c).sum())
    loss_mag = float((c_mag * c_mag).sum())
    grad_Y = Op.T @ c
    grad_Y_mag = Op_mag.T @ c_mag
    dOp = c @ Y.T
    dOp_mag = c_mag @ np.abs(Y).T
    gv, gm, ulps2 = _dense_reference(Qp, K1p, K2p, V1p, V2p, dOp, 1.0 / d, False, dO_mag=dOp_mag)
    grad_X = A1.T @ gv["dQ"]
    grad_X_mag = np.abs(A1).T @ gm["dQ"]
    ulps = max(ulps, ulps2) + 4 * (d * d + n)
    return ({"paper.loss": np.array(LD(loss)), "paper.output": out, "paper.grad_X": grad_X, "paper.grad_Y": grad_Y},
            {"paper.loss": np.array(LD(loss_mag)), "paper.output": out_mag, "paper.grad_X": grad_X_mag,
             "paper.grad_Y": grad_Y_mag}, ulps)


def evaluate_paper(A1, A2, A3, A4, A5, E, X, Y, options: dict) -> dict:
    """``paper.poly_certificate`` against the extended-precision reference of SPEC §3."""
    try:
        cert = paper.poly_certificate(A1, A2, A3, A4, A5, E, X, Y, **options)
    except ValueError as refusal:
        return {"refused": str(refusal), "names_cause": _refusal_names_cause(str(refusal))}
    values, mags, ulps = _paper_reference(A1, A2, A3, A4, A5, E, X, Y)
    approx = {"paper.loss": np.array(cert.loss), "paper.output": cert.output, "paper.grad_X": cert.grad_X,
              "paper.grad_Y": cert.grad_Y}
    bounds = {"paper.loss": np.array(cert.loss_bound), "paper.output": cert.output_bound,
              "paper.grad_X": cert.grad_X_bound, "paper.grad_Y": cert.grad_Y_bound}
    result = {name: _ratio(approx[name], values[name], bounds[name], ulps * EPS_LD * mags[name])
              for name in PAPER_QUANTITIES}
    return {"quantities": result, "violations": [], "degree": int(cert.plan.degree), "rank": int(cert.plan.rank),
            "radius_max": float(np.max(cert.plan.radius))}


# --------------------------------------------------------------------------------------------
# search
# --------------------------------------------------------------------------------------------

def run_case(params: dict, seed) -> dict:
    """Build (seeded by ``seed``) and evaluate one case of ``params``."""
    rng = np.random.default_rng(seed)
    if params.get("kind") == "paper":
        *arrays, options = build_paper(rng, **params)
        return evaluate_paper(*arrays, options)
    *arrays, options = build(rng, **params)
    return evaluate(*arrays, options)


def search(seed: int = 0, budget_seconds: float | None = None, n_cases: int | None = None, *,
           kinds=KINDS, large_n: tuple = ()) -> dict:
    """Seeded search over the structured kinds; the worst ratio per certified quantity.

    Runs ``n_cases`` cases (or as many as fit in ``budget_seconds``; at least one of the two),
    kind i of case k chosen round-robin from ``kinds``, parameters from ``sample_params`` seeded
    by (seed, k). ``large_n`` adds one causal constant-key case per length (closed-form reference).

    Returns a JSON-serialisable dict: ``worst`` {quantity: {ratio, error, bound, entry, case}}
    (ratio = excess error/bound of the worst entry; bound 0 with an error gives ``inf``),
    ``cases``, ``computed``, ``refused`` (by kind; a refused case is retried once on the same arrays at
    ``max_degree``, and a refused retry counts again), ``refusals_unnamed`` (refusal messages that
    name neither the tolerance nor the degree), ``exceeded`` (cases with a bound exceeded, at most
    50), ``violations`` and ``seconds``.
    """
    if budget_seconds is None and n_cases is None:
        raise ValueError("give budget_seconds or n_cases")
    start = time.perf_counter()
    worst = {}
    refused, exceeded, violations, unnamed = {}, [], [], []
    cases = computed = 0
    plan_list = [("large_n", n) for n in large_n]
    k = 0
    while True:
        if plan_list:
            _, n = plan_list.pop(0)
            params = {"kind": "constant_keys", "n": n, "d": 4, "dv": 4, "causal": True, "jitter": 0.0,
                      "constant_keys": True, "radius": 1.0, "tol": 1e-6, "family": "chebyshev",
                      "logits": "random", "values1": "large", "values2": "large", "value_scale": 1e2}
            case_seed = [seed, 10**6 + n]
        else:
            if n_cases is not None and k >= n_cases:
                break
            if budget_seconds is not None and time.perf_counter() - start > budget_seconds:
                break
            kind = kinds[k % len(kinds)]
            params = sample_params(kind, np.random.default_rng([seed, k]))
            case_seed = [seed, k, 1]
            k += 1
        params["seed"] = case_seed
        cases += 1
        outcome = run_case(params, case_seed)
        if "refused" in outcome:
            refused[params["kind"]] = refused.get(params["kind"], 0) + 1
            if not outcome["names_cause"] and len(unnamed) < 20:
                unnamed.append({"case": dict(params), "message": outcome["refused"]})
            # the same arrays once more at the highest degree of the rank cap (most often accepted)
            width = params["d"] ** 2 if params["kind"] == "paper" else params["d"]
            top = max_degree(width)
            if params.get("degree") == top:
                continue
            params = {k: v for k, v in params.items() if k != "tol"}
            params["degree"] = top
            params["retry"] = True
            outcome = run_case(params, case_seed)
            if "refused" in outcome:
                refused[params["kind"]] = refused.get(params["kind"], 0) + 1
                if not outcome["names_cause"] and len(unnamed) < 20:
                    unnamed.append({"case": dict(params), "message": outcome["refused"]})
                continue
        computed += 1
        for v in outcome["violations"]:
            violations.append(f"{v} at {describe(params)}")
        bad = []
        for name, rec in outcome["quantities"].items():
            if rec["exceeded"]:
                bad.append((name, rec["ratio"]))
            if name not in worst or rec["ratio"] > worst[name]["ratio"]:
                worst[name] = dict(rec, case=dict(params))
        if bad and len(exceeded) < 50:
            exceeded.append({"case": dict(params), "quantities": {n_: r for n_, r in bad}})
    return {"seed": seed, "cases": cases, "computed": computed, "refused": refused,
            "refusals_unnamed": unnamed, "worst": worst, "exceeded": exceeded, "violations": violations,
            "seconds": round(time.perf_counter() - start, 3)}
