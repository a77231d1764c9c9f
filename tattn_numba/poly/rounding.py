"""Floating-point terms of the surrogate's certificates (derivation: docs/math/rounding.rst).

The polynomial error ε_i of :mod:`.exp_approx` certifies the surrogate in exact arithmetic.
The computed surrogate adds rounding, which the alternating coefficients of the polynomials
amplify: every computed quantity is a signed sum of terms U1[i,α]·U2[j1,α]·U3[j2,α]·(values)
whose absolute values can exceed the sum itself by a factor of about e^{2R}. This module bounds
that rounding a priori, from O((n + m1 + m2)·(d + dv)) numbers, with the running-error argument
of Higham (2002, ch. 3): a computed sum of products, each term having passed through at most
K roundings, differs from the exact sum by at most γ_K times the sum of the terms' absolute
values (γ_K = K·u/(1 − K·u)), whatever the summation order. Here that absolute sum is bounded
by the coefficient mass A_i = Σ_t |a_{i,t}| (the features are balanced so that
Σ_α |U1[i,α]·U2[j1,α]·U3[j2,α]| <= A_i for every pair) times sums of |values|, and the exact
normaliser from below by (1 − ε_i)·(allowed pairs)·e^{−R_i}.

All functions work on batch-flattened arrays: per-row quantities have shape (B, n).
"""

from __future__ import annotations

from functools import reduce
from typing import NamedTuple

import numpy as np

from ..mask import Mask

__all__ = [
    "UNIT_ROUNDOFF", "unit_roundoff", "gamma", "forward_roundings", "backward_roundings", "coefficient_mass",
    "backward_spans", "forward_spans", "touched_queries", "RowRounding", "row_rounding", "tuple_rounding", "tuple_backward_roundings", "tuple_gradient_rounding", "output_rounding", "gradient_rounding",
    "gradient_magnitudes", "tuple_gradient_magnitudes",
]

#: u of float64, the precision every stage of the surrogate computes in.
UNIT_ROUNDOFF = 2.0**-53


def unit_roundoff(dtype) -> float:
    """u = eps/2 of ``dtype``: 2^-53 for float64, 2^-24 for float32."""
    return float(np.finfo(np.dtype(dtype)).eps) / 2.0


def gamma(k, u: float = UNIT_ROUNDOFF):
    """γ_k = k·u / (1 − k·u), inf where k·u >= 1 (elementwise for arrays)."""
    ku = np.asarray(k, dtype=np.float64) * u
    with np.errstate(divide="ignore"):
        return np.where(ku < 1.0, ku / np.maximum(1.0 - ku, 0.0), np.inf)


def _feature_roundings(degree: int, t: int = 2) -> int:
    """Roundings in one product U1[i,α]·U2[j1,α]·…·U_{t+1}[jt,α] with its query weight, for t
    key sets: t + 2 per query variable (balancing by s/R and the t column maxima), 2 per key
    variable (K·(1/κ)), one per monomial factor on each of the t + 1 sides, the multinomial
    (2 per degree) and the coefficient (2): at most (4t + 5)·g + 2, rounded up to
    (4t + 8)·g + 8 (16g + 8 for t = 2) so that every implementation of the feature maps (CPU
    and CUDA) is covered."""
    return (4 * t + 8) * degree + 8


def forward_roundings(degree: int, rank: int, *lengths: int) -> int:
    """K of the forward for key sets of ``lengths`` m_1..m_t rows: features, the t key sums (at
    most 2·m_a each, counting the chunked accumulation and the scans), the t − 1 Hadamard
    products, the r-term feature sum and the final products: (4t + 8)·g + 8 + 2·Σ m_a + r + 6 + t
    (16g + 8 + 2·(m1 + m2) + r + 8 for t = 2)."""
    t = len(lengths)
    return _feature_roundings(degree, t) + 2 * sum(lengths) + rank + 6 + t


def backward_roundings(degree: int, rank: int, n: int, m1: int, m2: int, d: int, dv: int) -> int:
    """K of the backward: the forward's terms plus the sums over query rows (at most 2·n with
    chunking), the dv·d-wide contractions and the downdating of the causal scans (covered by the
    2·m of each key sum): 16g + 8 + 2·(m1 + m2) + 2·n + r + 2·(d + dv) + 32."""
    return tuple_backward_roundings(degree, rank, n, (m1, m2), d, dv)


def tuple_backward_roundings(degree: int, rank: int, n: int, lengths, d: int, dv: int) -> int:
    """:func:`backward_roundings` for t key sets of ``lengths`` rows, with the t − 1 products of
    the other key sets' summaries: (4t + 8)·g + 8 + 2·Σ m_a + 2·n + r + 2·(d + dv) + 30 + t."""
    t = len(lengths)
    return _feature_roundings(degree, t) + 2 * sum(lengths) + 2 * n + rank + 2 * (d + dv) + 30 + t


def coefficient_mass(coefficients: np.ndarray) -> np.ndarray:
    """A_i >= Σ_t |a_{i,t}| (the computed sum of g + 1 non-negative terms, inflated by its
    own rounding), from ``coefficients`` (..., g + 1)."""
    terms = coefficients.shape[-1]
    return np.sum(np.abs(coefficients), axis=-1) / (1.0 - float(gamma(terms)))


def _chunk_bounds(n: int, chunk: int | None) -> tuple[np.ndarray, np.ndarray]:
    """First and last row of every row's chunk, (n,) each; one chunk when ``chunk`` is None."""
    rows = np.arange(n)
    if chunk is None:
        return np.zeros(n, dtype=np.int64), np.full(n, n - 1, dtype=np.int64)
    start = rows // chunk * chunk
    return start, np.minimum(start + chunk, n) - 1


def forward_spans(mask: Mask, n: int, m1: int, m2: int, chunk: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """How many key-row terms enter the forward's computed key state of row i, counting a row
    that is added and later subtracted twice: the pair counts, except for the windowed scans
    of :mod:`.causal`, whose state of key set k restarts exactly from the window every w_k rows
    (counted from each chunk's first row c0) at a row t and then adds row i and subtracts row
    i − w_k: (i + 1 − lo(t)) + (lo(i) − lo(t)) <= 3·w_k − 2, lo(x) = max(0, x + 1 − w_k)
    (for w_k = n, lo = 0 and this is i + 1, the carried prefix). ``chunk`` None: one chunk."""
    widths = mask.narrow_window(n)
    if widths is None:
        return mask.pair_counts(n, m1, m2)
    rows = np.arange(n)
    start, _ = _chunk_bounds(n, chunk)
    spans = []
    for w in widths:
        t = start + (rows - start) // w * w
        lo_i, lo_t = np.maximum(0, rows + 1 - w), np.maximum(0, t + 1 - w)
        spans.append(((rows + 1 - lo_t) + (lo_i - lo_t)).astype(np.float64))
    return tuple(spans)


def backward_spans(mask: Mask, n: int, m1: int, m2: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """How many key rows enter the computed key state of row i in the backward, counting the
    rows that are added and later downdated twice: the pair counts of ``mask`` when the
    backward sums over whole key sets (the full mask); with the prefix scans of the causal
    mask, 2·(c(i) + 1), c(i) the last row of i's chunk (its checkpoint). With the windowed
    scans, every reverse scan that visits row i started at a row <= top(i) = min(n, e(i) +
    max(w1, w2)) − 1 (e(i) the last row of i's chunk) and restarts set k exactly every w_k
    rows, so its state was last rebuilt at a row t <= min(top(i), i + w_k − 1) and stepped
    down to i: (t + 1 − lo(i)) + (t − i) <= 3·w_k − 2."""
    if mask.is_full:
        return mask.pair_counts(n, m1, m2)
    widths = mask.narrow_window(n)
    if widths is None:
        chunk_end = np.minimum((np.arange(n) // chunk + 1) * chunk, n).astype(np.float64)
        return 2.0 * chunk_end, 2.0 * chunk_end
    rows = np.arange(n)
    _, end = _chunk_bounds(n, chunk)
    top = np.minimum(n, end + max(widths)) - 1
    spans = []
    for w in widths:
        t = np.minimum(top, rows + w - 1)
        spans.append(((t + 1 - np.maximum(0, rows + 1 - w)) + (t - rows)).astype(np.float64))
    return tuple(spans)


def touched_queries(mask: Mask, n: int, m1: int, m2: int, chunk: int) -> tuple[tuple[np.ndarray, ...], ...]:
    """``((start1, stop1, again1), (start2, stop2, again2))``, int64 arrays (m,): the query rows
    whose terms enter the backward's computed sum for key row j are [start, stop), those in
    [again, stop) twice (added, then subtracted again). Without a window narrower than n this
    is :meth:`Mask.query_ranges` (again = stop); with the windowed scans, key row j of the chunk
    ending at e sums the query rows [j, min(n, e + w)) and subtracts [j + w, min(n, e + w))."""
    widths = mask.narrow_window(n)
    if widths is None:
        return tuple((start, stop, stop) for start, stop in mask.query_ranges(n, m1, m2))
    rows = np.arange(n, dtype=np.int64)
    _, end = _chunk_bounds(n, chunk)
    sides = []
    for w in widths:
        stop = np.minimum(n, end + w)
        sides.append((rows, stop, np.minimum(rows + w, stop)))
    return tuple(sides)


class RowRounding(NamedTuple):
    """Per-row numbers (B, n) behind every rounding term.

    mass : A_i, the coefficient mass (bounds Σ_α |U1 U2 U3| for every pair).
    lower : L_i, a lower bound on the exact surrogate normaliser w_i = Σ_pairs P_i(logit).
    weight : A_i / L_i, a bound on every exact surrogate weight P̃[i, j1, j2].
    eta_forward : bound on |ŵ_i − w_i| / ŵ_i-type relative error of the forward's normaliser,
        e_i / (L_i − e_i) with e_i = γ_K·A_i·|I1||I2| (inf when not certified).
    """

    mass: np.ndarray
    lower: np.ndarray
    weight: np.ndarray
    eta_forward: np.ndarray


def _relative(error: np.ndarray, lower: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return np.where(lower > error, error / np.maximum(lower - error, 1e-300), np.inf)


def row_rounding(coefficients: np.ndarray, radius: np.ndarray, epsilon: np.ndarray, *, degree: int, rank: int,
                 n: int, m1: int, m2: int, mask: Mask, lse: np.ndarray | None = None,
                 chunk: int | None = None) -> RowRounding:
    """The :class:`RowRounding` of a plan's per-row fits (``coefficients`` (B, n, g + 1),
    ``radius`` and ``epsilon`` (B, n)) for the pairs of ``mask``: :func:`tuple_rounding` with
    the pair counts |I1(i)|·|I2(i)| and the key terms of the computed states
    (:func:`forward_spans`, with the plan's ``chunk``; the pair counts except for sliding
    windows, whose running sums also subtract)."""
    count1, count2 = mask.pair_counts(n, m1, m2)
    span1, span2 = forward_spans(mask, n, m1, m2, chunk)
    return tuple_rounding(coefficients, radius, epsilon, roundings=forward_roundings(degree, rank, m1, m2),
                          tuples=count1 * count2, spans=span1 * span2, lse=lse)


def tuple_rounding(coefficients: np.ndarray, radius: np.ndarray, epsilon: np.ndarray, *, roundings: int,
                   tuples, spans, lse: np.ndarray | None = None) -> RowRounding:
    """The :class:`RowRounding` of per-row fits for any number t of key sets.

    ``tuples`` (n,) or scalar is how many key tuples row i sees, ``spans`` how many key-tuple
    terms enter its computed state (``tuples`` unless running sums also subtract) and
    ``roundings`` the K of :func:`forward_roundings`. Every logit of row i lies in
    [−R_i, R_i], so the exact normaliser is at least (1 − ε_i)·tuples_i·e^{−R_i}. With ``lse``
    (B, n), the forward's log ŵ_i, the computed normaliser gives a second lower bound,
    ŵ_i − e_i (e_i its certified rounding), usually larger by about e^{R_i}: the larger of the
    two is used."""
    mass = coefficient_mass(coefficients)
    error = gamma(roundings) * mass * spans
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        lower = np.clip(1.0 - epsilon, 0.0, None) * tuples * np.exp(-radius)
        if lse is not None:
            # exp(log ŵ) is ŵ to a relative (|lse| + 2)·4u (log and exp each within 2 ulp)
            computed = np.exp(lse) * (1.0 - (np.abs(lse) + 2.0) * 4.0 * UNIT_ROUNDOFF)
            lower = np.maximum(lower, np.where(np.isfinite(computed), computed - error, 0.0))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        weight = np.where(lower > 0.0, mass / np.maximum(lower, 1e-300), np.inf)
    return RowRounding(mass, lower, weight, _relative(error, lower))


def output_rounding(rounding: RowRounding, value_bound: np.ndarray, output_dtype) -> np.ndarray:
    """Bound (B, n, dv) on |computed Õ − exact-arithmetic Õ| including the cast to ``output_dtype``.

    With numerator and normaliser errors e_k <= γ_K·A_i·Σ|V1_k|·Σ|V2_k| <= η_i·L_i·v_k and
    e_0 <= η_i·L_i (v_k = max|V1_k|·max|V2_k| = ``value_bound`` (B, dv), and the exact ratio at
    most v_k), |a/b − â/b̂| <= (e_k + v_k·e_0)/(L_i − e_0) <= 2·η_i·v_k; the division and the cast
    add (u + u_out·(1 + u))·(v_k + that), and a cast to float32 half its subnormal spacing
    (2^-150: below 2^-126 the cast's error is absolute, not relative).
    """
    narrow = np.dtype(output_dtype) != np.float64
    u_out = unit_roundoff(output_dtype) if narrow else 0.0
    tiny = float(np.finfo(output_dtype).smallest_subnormal) / 2 if narrow else 0.0
    eta = rounding.eta_forward[:, :, None]
    v = value_bound[:, None, :]
    with np.errstate(invalid="ignore", over="ignore"):
        ratio = np.where(v > 0.0, 2.0 * eta * v, 0.0)
        return ratio + (UNIT_ROUNDOFF + u_out * (1.0 + UNIT_ROUNDOFF)) * (v + ratio) + tiny


def _over_queries(x: np.ndarray, queries: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """Σ over the query rows start[j] <= i < stop[j] of x[b, i, :], plus the rows
    again[j] <= i < stop[j] once more, shape (B, rows, k), with ``queries = (start, stop, again)``
    from :func:`touched_queries`: S[start] + S[again] − 2·S[stop] with the suffix sums
    S[i] = Σ_{i' >= i} x[i'] (S[n] = 0) of the non-negative x, plus the rounding of the positive
    parts (γ_{n+1}·(S[start] + S[again])) so that the difference stays an upper bound."""
    start, stop, again = queries
    suffix = np.concatenate([np.cumsum(x[:, ::-1], axis=1)[:, ::-1], np.zeros_like(x[:, :1])], axis=1)
    once = suffix[:, start] * (1.0 + float(gamma(x.shape[1] + 1))) - suffix[:, stop]
    twice = suffix[:, again] * (1.0 + float(gamma(x.shape[1] + 1))) - suffix[:, stop]
    return once + np.where((again < stop)[None, :, None], np.maximum(twice, 0.0), 0.0)


def gradient_rounding(rounding: RowRounding, *, scale: float, Q_abs: np.ndarray, dO_abs: np.ndarray,
                      dZ_mass: np.ndarray, k1: np.ndarray, k2: np.ndarray, v1: np.ndarray, v2: np.ndarray,
                      m1: int, m2: int, mask: Mask, chunk: int, degree: int, rank: int,
                      output_dtype, key_roundings: int = 0) -> tuple[np.ndarray, ...]:
    """Bounds on |computed gradient − exact-arithmetic surrogate gradient| (dQ, dK1, dK2, dV1, dV2),
    including the cast to ``output_dtype``.

    ``Q_abs`` (B, n, d) and ``dO_abs`` (B, n, dv) are |Q| and |dO|; ``dZ_mass`` (B, n) bounds
    |dS − δ̂| for row i (Σ_m |dO[i,m]|·v1_m·v2_m + |δ̂_i|); ``k1``, ``k2`` (B, d) and ``v1``,
    ``v2`` (B, dv) are column maxima of |K1|, |K2|, |V1|, |V2|. With P̄_i = A_i/L_i bounding every
    exact surrogate weight, S1, S2 the backward spans (:func:`backward_spans`), the backward's
    normaliser error η_i = γ_K·A_i·S1·S2/(L_i − γ_K·A_i·S1·S2), and μ2_i = min(1, P̄_i·|I2(i)|)
    bounding a marginal Σ_j2 P̃[i, j1, j2]:

        ω0_i = η_i + (1 + η_i)·γ_K·P̄_i·S1·S2,        |ΔdQ[i,l]|  <= s·ω0_i·dZ_mass_i·k1_l·k2_l
        ω2_i = η_i·μ2_i + (1 + η_i)·γ_K·P̄_i·S2,      |ΔdK1[j,l]| <= s·k2_l·Σ_{i sees j} ω2_i·dZ_mass_i·|Q[i,l]|
                                                     |ΔdV1[j,m]| <= v2_m·Σ_{i sees j} ω2_i·|dO[i,m]|

    (dK2, dV2 with the roles of 1 and 2 swapped; "i sees j" counts the query rows whose terms
    the computed sum touches, twice those added and subtracted again: :func:`touched_queries`);
    the cast adds u_out times the magnitude
    bounds s·dZ_mass·k1·k2 (μ-weighted for the key gradients) plus these.

    ``key_roundings`` more roundings are allowed on every term of the key and value gradients
    (γ_K in ω1, ω2 becomes γ_{K + key_roundings}): when G query entries share the keys, their
    query summaries (or, with the prefix scans, their key gradients) are added up in float64,
    so a term passes through up to (G − 1)·⌈n/chunk⌉ more additions (the chunked accumulation of
    the summaries on the GPU), and the bounds of the G entries, summed, bound the group's sum.
    """
    B, n, d = Q_abs.shape
    dv = dO_abs.shape[2]
    dQ, (dK1, dK2), (dV1, dV2) = tuple_gradient_rounding(
        rounding, scale=scale, Q_abs=Q_abs, dO_abs=dO_abs, dZ_mass=dZ_mass, key_max=[k1, k2], value_max=[v1, v2],
        counts=mask.pair_counts(n, m1, m2), spans=backward_spans(mask, n, m1, m2, chunk),
        queries=touched_queries(mask, n, m1, m2, chunk), roundings=backward_roundings(degree, rank, n, m1, m2, d, dv),
        output_dtype=output_dtype, key_roundings=key_roundings)
    return dQ, dK1, dK2, dV1, dV2


def _others(arrays: list, a: int, initial=None):
    """Π_{b≠a} arrays[b], multiplied in order onto ``initial`` (None: the first factor; 1.0 for
    none)."""
    others = [x for b, x in enumerate(arrays) if b != a]
    if initial is None:
        return reduce(np.multiply, others) if others else 1.0
    return reduce(np.multiply, others, initial)


def tuple_gradient_rounding(rounding: RowRounding, *, scale: float, Q_abs: np.ndarray, dO_abs: np.ndarray,
                            dZ_mass: np.ndarray, key_max: list, value_max: list, counts, spans, queries,
                            roundings: int, output_dtype, key_roundings: int = 0) -> tuple:
    """:func:`gradient_rounding` for t key sets: ``(dQ, [dK_a], [dV_a])``.

    ``key_max`` and ``value_max`` are the t column maxima κ_a (B, d) and v_a (B, dv); ``counts``,
    ``spans`` (n,) and ``queries`` ((start, stop, again) of :func:`touched_queries`) one per key
    set; ``roundings`` the K of :func:`tuple_backward_roundings`. With the products over the
    other key sets in place of the single other set of t = 2 (μ_a = min(1, P̄_i·Π_{b≠a} |I_b(i)|)
    bounds a marginal Σ_{tuples with j_a fixed} P̃):

        ω0_i = η_i + (1 + η_i)·γ_K·P̄_i·Π_a S_a,     |ΔdQ[i,l]| <= s·ω0_i·dZ_mass_i·Π_a κ_{a,l}
        ω_a,i = η_i·μ_a,i + (1 + η_i)·γ_K·P̄_i·Π_{b≠a} S_b,
        |ΔdK_a[j,l]| <= s·Π_{b≠a} κ_{b,l}·Σ_{i sees j} ω_a,i·dZ_mass_i·|Q[i,l]|,
        |ΔdV_a[j,m]| <= Π_{b≠a} v_{b,m}·Σ_{i sees j} ω_a,i·|dO[i,m]|,

    plus the cast to ``output_dtype``.
    """
    u_out = unit_roundoff(output_dtype) if np.dtype(output_dtype) != np.float64 else 0.0
    g, g_key = float(gamma(roundings)), float(gamma(roundings + key_roundings))
    weight = rounding.weight
    dkeys, dvalues = [], []
    with np.errstate(invalid="ignore", over="ignore"):
        eta = _relative(reduce(np.multiply, spans, g * rounding.mass), rounding.lower)
        omega0 = eta + reduce(np.multiply, spans, (1.0 + eta) * g * weight)
        query = (omega0 + u_out * (1.0 + omega0)) * dZ_mass
        dQ = scale * query[:, :, None] * reduce(np.multiply, key_max)[:, None, :]
        for a in range(len(key_max)):
            mu = np.minimum(1.0, _others(counts, a, weight))
            omega = eta * mu + _others(spans, a, (1.0 + eta) * g_key * weight)
            key = omega + u_out * (mu + omega)
            dkeys.append(_others([k[:, None, :] for k in key_max], a, scale)
                         * _over_queries((key * dZ_mass)[:, :, None] * Q_abs, queries[a]))
            dvalues.append(_others([v[:, None, :] for v in value_max], a) * _over_queries(key[:, :, None] * dO_abs,
                                                                                         queries[a]))
    finite = [np.where(np.isnan(x), np.inf, x) for x in (dQ, *dkeys, *dvalues)]
    t = len(key_max)
    return finite[0], finite[1:1 + t], finite[1 + t:]


def tuple_gradient_magnitudes(rounding: RowRounding, *, scale: float, Q_abs: np.ndarray, dO_abs: np.ndarray,
                              dZ_mass: np.ndarray, key_max: list, value_max: list, counts, queries) -> tuple:
    """:func:`gradient_magnitudes` for t key sets, ``(dQ, [dK_a], [dV_a])``: bounds on the
    exact-arithmetic surrogate gradients that a later float64 sum (grouped or broadcast heads) and
    the cast round relative to. Arguments as for :func:`tuple_gradient_rounding`; with
    μ_a,i = min(1, P̄_i·Π_{b≠a} |I_b(i)|) bounding a marginal of P̃ and |dZ̃| <= P̃·dZ_mass,

        |dQ[i,l]| <= s·dZ_mass_i·Π_a κ_{a,l}
        |dK_a[j,l]| <= s·Π_{b≠a} κ_{b,l}·Σ_{i sees j} μ_a,i·dZ_mass_i·|Q[i,l]|
        |dV_a[j,m]| <= Π_{b≠a} v_{b,m}·Σ_{i sees j} μ_a,i·|dO[i,m]|.
    """
    with np.errstate(invalid="ignore", over="ignore"):
        dQ = scale * dZ_mass[:, :, None] * reduce(np.multiply, key_max)[:, None, :]
        dkeys, dvalues = [], []
        for a in range(len(key_max)):
            mu = np.minimum(1.0, _others(counts, a, rounding.weight))
            dkeys.append(_others([k[:, None, :] for k in key_max], a, scale)
                         * _over_queries((mu * dZ_mass)[:, :, None] * Q_abs, queries[a]))
            dvalues.append(_others([v[:, None, :] for v in value_max], a) * _over_queries(mu[:, :, None] * dO_abs,
                                                                                       queries[a]))
    return dQ, dkeys, dvalues


def gradient_magnitudes(rounding: RowRounding, *, scale: float, Q_abs: np.ndarray, dO_abs: np.ndarray,
                        dZ_mass: np.ndarray, k1: np.ndarray, k2: np.ndarray, v1: np.ndarray, v2: np.ndarray,
                        m1: int, m2: int, mask: Mask) -> tuple[np.ndarray, ...]:
    """Bounds on |exact-arithmetic surrogate gradient| (dQ, dK1, dK2, dV1, dV2), entrywise: the
    magnitudes that a later float64 sum (over grouped or broadcast heads), the pull-back of a
    lifted logit form and the cast to the caller's dtype round relative to.

    Arguments as for :func:`gradient_rounding`. The surrogate weights P̃ are non-negative (a
    certified polynomial is positive on the row's interval) and sum to 1 over a row, a marginal
    Σ_j2 P̃[i, j1, j2] is at most μ2_i = min(1, P̄_i·|I2(i)|), and |dZ̃| <= P̃·dZ_mass, so

        |dQ[i,l]|  <= s·dZ_mass_i·k1_l·k2_l
        |dK1[j,l]| <= s·k2_l·Σ_{i sees j} μ2_i·dZ_mass_i·|Q[i,l]|,   |dV1[j,m]| <= v2_m·Σ_{i sees j} μ2_i·|dO[i,m]|

    (dK2, dV2 with 1 and 2 swapped; "i sees j" from :meth:`Mask.query_ranges`).
    """
    n = Q_abs.shape[1]
    count1, count2 = mask.pair_counts(n, m1, m2)
    (start1, stop1), (start2, stop2) = mask.query_ranges(n, m1, m2)
    with np.errstate(invalid="ignore", over="ignore"):
        mu2, mu1 = np.minimum(1.0, rounding.weight * count2), np.minimum(1.0, rounding.weight * count1)
        dQ = scale * dZ_mass[:, :, None] * (k1 * k2)[:, None, :]
        dK1 = scale * k2[:, None, :] * _over_queries((mu2 * dZ_mass)[:, :, None] * Q_abs, (start1, stop1, stop1))
        dK2 = scale * k1[:, None, :] * _over_queries((mu1 * dZ_mass)[:, :, None] * Q_abs, (start2, stop2, stop2))
        dV1 = v2[:, None, :] * _over_queries(mu2[:, :, None] * dO_abs, (start1, stop1, stop1))
        dV2 = v1[:, None, :] * _over_queries(mu1[:, :, None] * dO_abs, (start2, stop2, stop2))
    return tuple(np.where(np.isnan(x), np.inf, x) for x in (dQ, dK1, dK2, dV1, dV2))
