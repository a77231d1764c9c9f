"""Certified radii, degree selection and the inspectable plan of the polynomial surrogate.

Everything here is O((n + m1 + m2)·(d + dv)) per batch entry: it only reads norms and maxima of
the inputs, never the logits.

Certificate (SPEC §5). With per-row relative error |P_i(x) − e^x| <= ε_i·e^x on the row's logit
interval [−R_i, R_i], the normalised weights obey |P̃ − P| <= κ_i·P entrywise with
κ_i = 2ε_i/(1 − ε_i), and since a row of P̃ − P sums to zero,

    |Õ[i, m] − O[i, m]| <= κ_i · (max_{j1,j2} w_m − min_{j1,j2} w_m) / 2,   w = V1 ⊘ V2.

Gradient bounds (derivation in docs/surrogate.md) push the same entrywise fact through the
formulas of SPEC §2 with the triangle inequality, using that the marginals of P are at most 1,
per batch entry of the kernels' (expanded, lifted) problem, then through the sums over grouped
or broadcast heads and the pull-back of determinant logits.
Both are exact-arithmetic statements; every bound adds the floating-point terms of
:mod:`.rounding` (docs/math/rounding.rst), and ``tol`` counts them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce
from typing import NamedTuple

import numba
import numpy as np

from .. import config
from .._validation import AttentionInputs, format_byte_pair, format_bytes
from ..logits import lift_matrices
from ..mask import Mask
from . import exp_approx
from ._blocks import SummaryLayout
from .features import rank
from .options import PolyOptions, check_memory_budget
from .rounding import gamma, gradient_magnitudes, gradient_rounding, output_rounding, row_rounding, unit_roundoff

__all__ = [
    "PolyPlan", "GradientBounds", "InputStatistics", "input_statistics", "balancing_maxima", "epsilon_for_tolerance", "row_radii",
    "tuple_radii", "certified_radii", "max_row_norm", "product_ranges", "Certifier", "certified_degree",
    "plan_from_certificate", "check_finite_radii_and_ranges", "memory_refusal", "polynomial_gradient_bounds",
    "round_up_to_grid", "per_row_fits", "value_ranges", "make_plan", "gradient_bounds", "check_certified",
    "normaliser_error", "check_normaliser", "keeps_key_summaries", "kappa_for_epsilon", "sum_key_groups",
    "sum_query_copies",
]

#: Rate assumed by the time estimate (floating-point operations per second, BLAS-bound
#: low-rank contractions on this project's 2-core reference machine).
ASSUMED_FLOPS = 5e10

#: Per-row radii are rounded up to 2^(k / RADIUS_GRID_STEPS): a polynomial certified on a
#: larger interval is certified on the row's own, and rows then share fits.
RADIUS_GRID_STEPS = 256


@dataclass(frozen=True)
class PolyPlan:
    """What the surrogate will do and what it certifies.

    Attributes
    ----------
    family : str
        ``"taylor"`` or ``"chebyshev"``.
    degree : int
        Polynomial degree g, shared by all rows (each row has its own coefficients).
    rank : int
        r = C(d + g, g), the number of feature columns.
    radius : ndarray, shape (..., n)
        Certified per-row logit radius: R_i = min(ℓ∞ row bound, Hölder bound), rounded up to a
        grid of :data:`RADIUS_GRID_STEPS` points per octave (at most 0.3% larger), so the
        polynomials are fitted once per distinct grid radius instead of once per row.
    global_radius : float
        The one-interval radius s·Σ_l max|Q_l|·max|K1_l|·max|K2_l| a global polynomial would need
        (s·Σ_l max|Q_l|·Π_a max|Ka_l| for the n-way plan of :func:`tattn_numba.nway_poly_plan`,
        whose radii, ranges and rounding are the same with t key sets).
    epsilon : ndarray, shape (..., n)
        Certified relative error of each row's polynomial on its interval.
    coefficients : ndarray, shape (..., n, degree + 1)
        Row i's polynomial P_i(x) = Σ_t coefficients[i, t]·(x / radius_i)^t.
    kappa : ndarray, shape (..., n)
        2ε/(1 − ε): the entrywise relative error of the normalised weights.
    output_bound : ndarray, shape (..., n, dv)
        Certified bound on |Õ − O| entrywise, for the output as returned (input dtype): the
        polynomial's error κ·range/2 plus ``rounding_bound``.
    max_output_bound : float
        Its maximum, the number a tolerance is compared with.
    estimated_seconds, estimated_bytes : float, int
        Forward+backward time at :data:`ASSUMED_FLOPS` and peak extra memory.
    chunk_rows : int
        Rows per chunk of the streamed feature matrices.
    gradient_bounds : GradientBounds or None
        Certified entrywise bounds on the five gradients' errors for the upstream ``dO`` given
        to :func:`tattn_numba.poly_plan` (None without one).
    rounding_bound : ndarray, shape (..., n, dv)
        The floating-point part of ``output_bound``: float64 rounding of the low-rank sums
        (amplified by the polynomial's cancellation, about e^{2R}), the division by the
        normaliser and the cast to the input dtype (docs/math/rounding.rst).
    """

    family: str
    degree: int
    rank: int
    radius: np.ndarray
    global_radius: float
    epsilon: np.ndarray
    coefficients: np.ndarray
    kappa: np.ndarray
    output_bound: np.ndarray
    max_output_bound: float
    estimated_seconds: float
    estimated_bytes: int
    chunk_rows: int
    gradient_bounds: "GradientBounds | None" = None
    rounding_bound: np.ndarray | None = None


class GradientBounds(NamedTuple):
    """Certified entrywise bounds on |gradient(surrogate) − gradient(exact)|, shaped like the
    gradients (batch-flattened inside the package, unflattened by the public layer: dQ with Q's
    leading dimensions, the other four with the keys')."""

    dQ: np.ndarray
    dK1: np.ndarray
    dK2: np.ndarray
    dV1: np.ndarray
    dV2: np.ndarray


@numba.njit(parallel=True, cache=config.CACHE)
def _column_extrema(X):
    """(min, max) over rows of X (B, n, d) per batch entry and column, in one parallel pass.

    NumPy's ``X.max(axis=1)`` walks a strided axis and is 5x slower for small d."""
    B, n, d = X.shape
    parts = max(1, min(64, n // 4096))
    lo = np.empty((B, parts, d))
    hi = np.empty((B, parts, d))
    for task in numba.prange(B * parts):
        b = task // parts
        part = task - b * parts
        start = part * n // parts
        stop = (part + 1) * n // parts
        for l in range(d):
            lo[b, part, l] = X[b, start, l]
            hi[b, part, l] = X[b, start, l]
        for j in range(start + 1, stop):
            for l in range(d):
                x = X[b, j, l]
                lo[b, part, l] = min(lo[b, part, l], x)
                hi[b, part, l] = max(hi[b, part, l], x)
    return lo, hi


def column_extrema(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column minima and maxima (B, d) of X (B, n, d), float64."""
    lo, hi = _column_extrema(np.ascontiguousarray(X, dtype=np.float64))
    return lo.min(axis=1), hi.max(axis=1)


def column_abs_max(X: np.ndarray) -> np.ndarray:
    """max_j |X[b, j, l]|, (B, d)."""
    lo, hi = column_extrema(X)
    return np.maximum(hi, -lo)


def key_column_maxima(K: np.ndarray) -> np.ndarray:
    """κ_l = max_j |K[b, j, l]| per batch entry, with 1 where a column is all zero; (B, d)."""
    return balancing_maxima(*column_extrema(K))


def balancing_maxima(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """κ = max(hi, −lo) from column minima and maxima, with 1 where a column is all zero."""
    kappa = np.maximum(hi, -lo)
    return np.where(kappa > 0.0, kappa, 1.0)


def max_row_norm(K: np.ndarray, t: int = 2) -> np.ndarray:
    """max_j ‖K[b, j]‖_{2t} per batch entry, (B,): the key factor of the Hölder radius for t
    key sets (exponents 2, 2t, …, 2t; ‖·‖₄ for t = 2)."""
    powers = np.abs(K.astype(np.float64)) ** t
    return np.sqrt(np.einsum("bjl,bjl->bj", powers, powers).max(axis=1) ** (1.0 / t))


class InputStatistics(NamedTuple):
    """The O((n + m1 + m2)·(d + dv)) numbers of the inputs that the plan reads, float64, on the host.

    Computed from host arrays by :func:`input_statistics`, or on the GPU (only these numbers
    are copied back) by :func:`tattn_numba.poly.cuda.input_statistics`.

    Q_min, Q_max, K1_min, K1_max, K2_min, K2_max : (B, d)
        Column minima and maxima over rows.
    V1_min, V1_max, V2_min, V2_max : (B, dv)
    K1_max_4norm, K2_max_4norm : (B,)
        max_j ‖K[b, j]‖₄.
    Q_weighted_l1 : (B, n)
        Σ_l |Q[b, i, l]|·max_j|K1[b, j, l]|·max_j|K2[b, j, l]|.
    Q_l2 : (B, n)
        ‖Q[b, i]‖₂.
    """

    Q_min: np.ndarray
    Q_max: np.ndarray
    K1_min: np.ndarray
    K1_max: np.ndarray
    K2_min: np.ndarray
    K2_max: np.ndarray
    V1_min: np.ndarray
    V1_max: np.ndarray
    V2_min: np.ndarray
    V2_max: np.ndarray
    K1_max_4norm: np.ndarray
    K2_max_4norm: np.ndarray
    Q_weighted_l1: np.ndarray
    Q_l2: np.ndarray


def input_statistics(inputs: AttentionInputs) -> InputStatistics:
    """:class:`InputStatistics` of host inputs; O((n + m1 + m2)·(d + dv)) per key/value entry.

    The key and value statistics are computed once per key/value entry (Bk) and read per batch
    entry through ``inputs.key_batch``, so grouped heads share them."""
    Q = np.asarray(inputs.Q, dtype=np.float64)
    kb = inputs.key_batch
    extrema = [column_extrema(inputs.Q)] + [tuple(x[kb] for x in column_extrema(y))
                                            for y in (inputs.K1, inputs.K2, inputs.V1, inputs.V2)]
    with np.errstate(over="ignore", invalid="ignore"):  # overflowing radii are refused by make_plan
        k12 = np.maximum(extrema[1][1], -extrema[1][0]) * np.maximum(extrema[2][1], -extrema[2][0])  # (B, d)
        return InputStatistics(
            *(bound for pair in extrema for bound in pair),
            K1_max_4norm=max_row_norm(inputs.K1)[kb], K2_max_4norm=max_row_norm(inputs.K2)[kb],
            Q_weighted_l1=np.einsum("bnl,bl->bn", np.abs(Q), k12), Q_l2=np.sqrt(np.einsum("bnl,bnl->bn", Q, Q)),
        )


def row_radii(inputs: AttentionInputs, statistics: InputStatistics | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-row certified logit radii (B, n) and the global one-interval radius (B,).

    R_i = min(s·Σ_l |Q[i,l]|·κ1_l·κ2_l,  s·‖Q_i‖₂·max_j‖K1_j‖₄·max_j‖K2_j‖₄) bounds
    Σ_l |s·Q[i,l]·K1[j1,l]·K2[j2,l]| (hence |logit|) for every pair: the first term by the
    column maxima, the second by Hölder's inequality with exponents (2, 4, 4). ``statistics``
    (default: computed from the host arrays of ``inputs``) are the numbers this reads.
    """
    stats = input_statistics(inputs) if statistics is None else statistics
    return tuple_radii(inputs.scale, stats.Q_weighted_l1, stats.Q_l2, np.maximum(stats.Q_max, -stats.Q_min),
                       [np.maximum(stats.K1_max, -stats.K1_min), np.maximum(stats.K2_max, -stats.K2_min)],
                       [stats.K1_max_4norm, stats.K2_max_4norm])


def tuple_radii(scale: float, Q_weighted_l1: np.ndarray, Q_l2: np.ndarray, Q_abs_max: np.ndarray,
                key_abs_max: list, key_norms: list) -> tuple[np.ndarray, np.ndarray]:
    """Per-row radii (B, n) and the global radius (B,) for t key sets.

    R_i = min(s·Σ_l |Q[i,l]|·Π_a κ_{a,l},  s·‖Q_i‖₂·Π_a max_j‖Ka_j‖_{2t}) bounds the absolute
    logit sum Σ_l |s·Q[i,l]·Π_a Ka[j_a,l]| of every tuple: the first by the column maxima κ_a,
    the second by Hölder's inequality with exponents (2, 2t, …, 2t). ``Q_weighted_l1`` (B, n) is
    Σ_l |Q[i,l]|·Π_a κ_{a,l}, ``Q_l2`` (B, n) ‖Q_i‖₂, ``Q_abs_max`` (B, d) max_i |Q[i,l]|,
    ``key_abs_max`` the t arrays κ_a (B, d) and ``key_norms`` the t arrays max_j‖Ka_j‖_{2t} (B,)
    (:func:`max_row_norm`)."""
    linf = scale * Q_weighted_l1
    holder = reduce(np.multiply, key_norms, scale)[:, None] * Q_l2
    global_radius = scale * np.einsum("bl,bl->b", Q_abs_max, reduce(np.multiply, key_abs_max))
    return np.minimum(linf, holder), global_radius


def certified_radii(radius: np.ndarray, d: int, t: int = 2) -> np.ndarray:
    """Computed radii made certified: inflated by γ_{2d + 8t} for their own rounding (the sums
    over d columns of products of t + 1 factors, the 2t-th roots), rounded up to the grid
    (:func:`round_up_to_grid`); NaN (from overflow) becomes inf."""
    with np.errstate(over="ignore", invalid="ignore"):
        radius = np.where(np.isnan(radius), np.inf, radius)
        return round_up_to_grid(radius * (1.0 + float(gamma(2 * d + 8 * t))))


def round_up_to_grid(radius: np.ndarray) -> np.ndarray:
    """Smallest 2^(k / RADIUS_GRID_STEPS) >= radius, elementwise (0 stays 0)."""
    positive = radius > 0.0
    k = np.ceil(np.log2(np.where(positive, radius, 1.0)) * RADIUS_GRID_STEPS)
    grid = np.exp2(k / RADIUS_GRID_STEPS)
    grid = np.where(grid < radius, np.exp2((k + 1) / RADIUS_GRID_STEPS), grid)  # guard rounding
    return np.where(positive, grid, 0.0)


def per_row_fits(family: str, degree: int, radius: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients (..., degree + 1) and certified errors (...) for grid radii, fitted once per
    distinct radius (a few thousand at most) and gathered back to the rows."""
    distinct, where = np.unique(radius, return_inverse=True)
    coefficients = exp_approx.exp_coefficients(family, degree, distinct)[where]
    epsilon = np.asarray(exp_approx.relative_error_bound(family, degree, distinct))[where]
    return coefficients.reshape(radius.shape + (degree + 1,)), epsilon.reshape(radius.shape)


def value_ranges(V1: np.ndarray, V2: np.ndarray) -> np.ndarray:
    """max − min over pairs of V1[j1, m]·V2[j2, m], per batch entry and column: (B, dv)."""
    return _ranges_of_products(*column_extrema(V1), *column_extrema(V2))


def _ranges_of_products(lo1, hi1, lo2, hi2) -> np.ndarray:
    """max − min of x·y over x in [lo1, hi1], y in [lo2, hi2], elementwise."""
    return product_ranges([lo1, lo2], [hi1, hi2])


def product_ranges(lows: list, highs: list) -> np.ndarray:
    """max − min of x_1·…·x_t over x_a in [lows[a], highs[a]], elementwise (the range of the
    tuple products of t value columns from their column extrema). The product of intervals is
    the interval of its corner products, so the t factors are folded in one at a time."""
    lo, hi = lows[0], highs[0]
    for lo_a, hi_a in zip(lows[1:], highs[1:]):
        corners = np.stack([lo * lo_a, lo * hi_a, hi * lo_a, hi * hi_a])
        lo, hi = corners.min(axis=0), corners.max(axis=0)
    return hi - lo


def polynomial_output_bound(kappa: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    """The exact-arithmetic output bound κ_i·range_m/2 (B, n, dv) from κ (B, n) and the value
    ranges (B, dv); 0 where a column's pair products are all equal (any positive weights are exact)."""
    with np.errstate(invalid="ignore"):
        return np.where(ranges[:, None, :] > 0.0, kappa[:, :, None] * ranges[:, None, :] / 2.0, 0.0)


def kappa_for_epsilon(epsilon):
    """κ = 2ε/(1 − ε), the weights' relative error for a polynomial relative error ε (inf where
    ε >= 1); elementwise. Its inverse for a tolerance is :func:`epsilon_for_tolerance`."""
    epsilon = np.asarray(epsilon, dtype=np.float64)
    with np.errstate(divide="ignore", over="ignore"):
        return np.where(epsilon < 1.0, 2.0 * epsilon / np.maximum(1.0 - epsilon, 1e-300), np.inf)


def chunk_rows(r: int, d: int, dv: int, budget: int, **shape) -> int:
    """Rows per streamed chunk (feature rows of r floats and their products with values): at most
    ``config.POLY_CHUNK_ROWS`` (and no more than the longest operand), the largest count whose
    :func:`memory_estimate` (same ``shape`` keywords) fits ``budget``; when none fits, the count
    with the smallest estimate (which :func:`make_plan` then refuses).

    Without the causal mask the estimate grows with the chunk; with it, fewer and larger chunks
    also mean fewer stored prefix states, so the smallest estimate may lie inside the range.
    """
    longest = max(shape.get("n", 0), shape.get("m1", 0), shape.get("m2", 0)) or config.POLY_CHUNK_ROWS
    cap = int(max(1, min(config.POLY_CHUNK_ROWS, longest)))

    def cost(rows: int) -> int:
        return memory_estimate(r, d, dv, rows, **shape)

    if cost(cap) <= budget:
        return cap
    lo, hi = 1, cap  # smallest estimate: ternary search (a maximum of terms linear in rows and in 1/rows)
    while hi - lo > 2:
        a, b = lo + (hi - lo) // 3, hi - (hi - lo) // 3
        if cost(a) <= cost(b):
            hi = b
        else:
            lo = a
    best = min(range(lo, hi + 1), key=lambda rows: (cost(rows), -rows))
    if cost(best) > budget:
        return best
    lo, hi = best, cap  # cost(lo) <= budget < cost(hi): the largest fitting count above the best
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if cost(mid) <= budget:
            lo = mid
        else:
            hi = mid
    return lo


#: Factor on the memory estimates for what a byte count of arrays misses: partly touched pages
#: and interpreter objects (measured: under 0.1 % of the peak).
MEMORY_SLACK = 1.01


def _memory_phases(r: int, d: int, dv: int, rows: int, *, n: int, m1: int, m2: int, batch: int, causal: bool,
                   degree: int, itemsize: int, keep_summaries: bool, window: int = 0) -> dict:
    """Peak bytes of each phase of the CPU surrogate (see :func:`memory_estimate`), float64
    unless said otherwise; ``kept`` is what the forward leaves alive for the backward."""
    f8, B = 8, batch
    widen = 1 if itemsize != 8 else 0  # float32 inputs are widened to float64 per batch entry
    layout = SummaryLayout(d, dv)
    W, k = layout.wide, layout.narrow  # [1 | V | K | V⊙K] and [1 | V]
    cn, c1, c2 = min(rows, n), min(rows, m1), min(rows, m2)
    cm, longest = max(c1, c2), max(n, m1, m2)
    masks = B * max(n * d, m1 * d, m2 * d, m1 * dv, m2 * dv, n * dv)  # np.isfinite of an operand, 1 byte an entry
    # make_plan: statistics (float64 Q, |Q|, squared keys), radii, per-row fits and the certificate
    # (measured: 10 + 4·dv + g floats per query row at its peak); kept: radius, ε, κ (n),
    # coefficients (n × (g + 1)), output and rounding bounds (n × dv)
    plan = f8 * B * max(n * (10 + 4 * dv + degree), widen * n * d + longest * (d + 1))
    plan_kept = f8 * B * n * (3 + (degree + 1) + 2 * dv)
    out = f8 * B * n * (dv + 1)  # float64 O and lse
    handed = B * n * dv * itemsize + f8 * B * n  # attention_forward's O in the input dtype and its lse copy
    cast = B * n * dv * (widen * itemsize + 1)  # O cast to the input dtype, and its finiteness mask
    saved = 2 * f8 * B * r * W if keep_summaries else 0
    # one batch entry's balanced variables: float64 copies (float32 inputs), q̃, K1/κ1, K2/κ2, and
    # the row factors. The previous entry's (and what its loop body left) are still alive while the
    # next entry's are built: a phase of its own when B > 1.
    balanced = f8 * (widen * (n * d + (m1 + m2) * (d + dv)) + (n + m1 + m2) * d + 2 * longest)
    if causal:  # n == m1 == m2
        # a chunk: U1, U2, U3 row-major (rows × r) and [1 | V] columns, one transposed block in flight;
        # with a window the key rows of the chunk reach max(w1, w2) − 1 rows further back
        ck = min(n, cn + window) if window else cn
        chunk = 3 * r * ck + k * ck + max(r * ck, 2 * k * ck)
        work = max(n * k + 2 * n + 2 * k * r + chunk, n * k + n * dv + 2 * n)
        left_over = n * k  # the previous entry's [w | w·Õ]
    else:
        wide = W if keep_summaries else k
        keys = wide * r + max(m1, m2) + 2 * wide * r + wide * cm + r * cm
        queries = 2 * wide * r + k * r + r * cn + k * cn + dv * cn + 2 * cn
        work = max(keys, queries)
        left_over = 3 * wide * r + k * cn
    per_entry = max(balanced + f8 * work, 2 * balanced + f8 * left_over if B > 1 else 0)
    forward = max(masks, plan, plan_kept + saved + out + per_entry, plan_kept + saved + out + max(cast, handed))
    kept = plan_kept + saved + out + handed

    grads = f8 * B * (n * d + (m1 + m2) * (d + dv))  # the five float64 gradients
    dO = f8 * B * n * dv  # dO in float64
    if causal and window:
        # windowed scans (poly/causal.py): three wide state pairs (lead and two trailing scans), no
        # stored checkpoints; a chunk's query rows reach max(w) rows, its key rows 2·max(w) rows beyond it
        states = 6 * W * r
        suffix = (2 * dv + 2 * dv * d + 2 * d + 1) * r
        own = n * (3 * d + 2 * dv)
        ck = min(n, cn + 2 * window)
        chunk = 3 * r * ck + W * ck + max(r * ck, 2 * W * ck)
        scans = 2 * n + suffix + states + own + chunk
        work = max(f8 * scans + grads * (B - 1) // B, grads + f8 * own)
        left_over = f8 * n * dv + grads * (B - 1) // B
    elif causal:
        pieces = -(-n // cn)
        states = (pieces + 1) * 2 * W * r  # P2, P3 with the wide columns, and a stored pair per chunk
        suffix = (2 * dv + 2 * dv * d + 2 * d + 1) * r
        own = n * (3 * d + 2 * dv)  # the entry's gradients before they are copied out
        chunk = 3 * r * cn + W * cn + max(r * cn, 2 * W * cn)
        scans = max(2 * n + states + 2 * r * cn + W * cn + max(r * cn, 2 * W * cn),  # prefix pass
                    2 * n + suffix + states + own + chunk)  # reverse pass, at its end
        # the gradients of the earlier entries are written; this entry's are copied in at its end
        work = max(f8 * scans + grads * (B - 1) // B, grads + f8 * own)
        left_over = f8 * n * dv + grads * (B - 1) // B
    else:
        side = dv + dv * d + d
        pair = 0 if keep_summaries else 2 * W * r  # key summaries recomputed per entry
        recompute = W * r + max(m1, m2) + 2 * W * r + W * cm + r * cm
        fixed = pair + r * (dv * d + d) + r + n
        query_chunk = 2 * W * r + W * cn + r * cn + cn + (dv * d + d) * cn + 3 * cn * d
        key_chunk = W * r + r * side + r * cm + side * cm + 3 * cm * d
        work = f8 * max(recompute, fixed + max(query_chunk, W * r + 2 * r * side, key_chunk)) + grads
        left_over = f8 * (3 * W * r + r * (dv * d + d) + r * side + cm * side + n) + grads * (B - 1) // B
    per_entry = max(balanced + work, 2 * balanced + left_over if B > 1 else 0)
    backward = max(B * n * dv, dO + per_entry,
                   grads + (grads // f8) * widen * itemsize + B * max(n * d, m1 * d, m2 * d, m1 * dv, m2 * dv))
    return {"forward": int(forward), "kept": int(kept), "backward": int(backward)}


def memory_estimate(r: int, d: int, dv: int, rows: int, *, n: int = 1, m1: int = 1, m2: int = 1, batch: int = 1,
                    causal: bool = False, degree: int | None = None, itemsize: int = 8,
                    keep_summaries: bool = False, window: int = 0) -> int:
    """Peak extra bytes of the CPU surrogate's forward followed by its backward
    (``attention_grad``), counting every allocation that grows with the problem, phase by phase.

    r is the rank, ``rows`` the chunk (:func:`chunk_rows`), ``batch`` the flattened batch B,
    ``itemsize`` the inputs' (4 for float32: float64 copies are made), ``keep_summaries`` whether
    the forward saves the wide key summaries (:func:`keeps_key_summaries`). Counted: the plan's
    per-row arrays and the transients that build them; O and lse (float64, the cast and the copies
    ``attention_forward`` hands out); per batch entry the balanced variables and float64 copies;
    the chunks of features U1, U2, U3 with their value columns and products; the r×(1 + dv + d +
    dv·d) key summaries; with the causal mask, the two prefix states stored per chunk of rows
    (2·⌈n / rows⌉·r·(1 + dv + d + dv·d) floats) and the entry's own gradients; the float64 dO and
    the five gradients and their casts. The forward alone needs at most this. ``window`` is
    max(w1, w2) (clipped to n) for a causal sliding window narrower than n, else 0: the windowed
    scans keep no checkpoints but build the features of up to chunk + 2·window rows per chunk.
    """
    if degree is None:
        degree = next(g for g in range(r + 1) if rank(d, g) >= r)
    phases = _memory_phases(r, d, dv, rows, n=n, m1=m1, m2=m2, batch=batch, causal=causal, degree=degree,
                            itemsize=itemsize, keep_summaries=keep_summaries, window=window)
    return int(MEMORY_SLACK * max(phases["forward"], phases["kept"] + phases["backward"]))


def make_plan(inputs: AttentionInputs, *, tol=None, degree=None, family="chebyshev",
              memory_budget=None, statistics: InputStatistics | None = None) -> PolyPlan:
    """Choose the degree (or check the given one) and certify the result; see :class:`PolyPlan`.

    Exactly one of ``tol`` (target bound on max |Õ − O|) and ``degree`` must be given. Raises
    ``ValueError`` naming the argument for an impossible request, and naming the degree, rank
    and memory when the rank's memory would pass ``memory_budget`` (default
    ``config.MEMORY_BUDGET_BYTES``). Only the shapes and scale of ``inputs`` are read when
    ``statistics`` (see :class:`InputStatistics`) is given, so its arrays may live on the GPU.
    """
    options = PolyOptions(tol=tol, degree=degree, family=family, memory_budget=memory_budget)
    tol, degree, family, budget = options.tol, options.degree, options.family, options.budget
    B, n, d = inputs.Q.shape
    dv = inputs.V1.shape[2]
    # refuse before the statistics allocate: the estimate needs only shapes (degree 0 bounds tol's)
    _budgeted_chunk(inputs, 0 if degree is None else degree, budget, chosen=degree is not None)
    stats = input_statistics(inputs) if statistics is None else statistics
    with np.errstate(over="ignore", invalid="ignore"):
        radius, global_radius = row_radii(inputs, stats)
        radius = certified_radii(radius, d)
        ranges = _ranges_of_products(stats.V1_min, stats.V1_max, stats.V2_min, stats.V2_max)
    check_finite_radii_and_ranges(radius, ranges, 2)
    m1, m2 = inputs.K1.shape[1], inputs.K2.shape[1]
    certify = _pair_certifier(inputs, stats, family, radius, ranges, budget)
    degree, certificate = certified_degree(certify, tol, degree)
    r = rank(d, degree)
    rows, nbytes = _budgeted_chunk(inputs, degree, budget)
    layout = SummaryLayout(d, dv)
    flops = 2.0 * B * r * ((n + m1 + m2) * layout.narrow + (n + 2 * (m1 + m2)) * layout.wide * 2)
    return plan_from_certificate(certify, degree, certificate, global_radius, inputs.batch_shape, d,
                                 seconds=flops / ASSUMED_FLOPS, nbytes=nbytes, chunk=rows)


def check_finite_radii_and_ranges(radius: np.ndarray, ranges: np.ndarray, t: int) -> None:
    """``ValueError`` when a certified radius or a range of the values' tuple products is not
    finite (float64 overflow), worded for t key sets."""
    keys = "max|K1[:,l]|·max|K2[:,l]|" if t == 2 else "Π_a max|Ka[:,l]|"
    if not np.all(np.isfinite(radius)):
        raise ValueError(f"the logit radius s·Σ_l |Q[i,l]|·{keys} overflows float64 for some row; "
                         "the surrogate cannot certify such logits: rescale the inputs or use method='exact'")
    if not np.all(np.isfinite(ranges)):
        what, which = ("pair products V1[j1]·V2[j2]", "V1 and V2") if t == 2 else \
            ("tuple products V1[j1]·…·Vt[jt]", "the values")
        raise ValueError(f"the {what} overflow float64 (their range is not finite); rescale {which}")


def certified_degree(certify: "Certifier", tol: float | None, degree: int | None) -> tuple[int, "_Certificate"]:
    """The given ``degree`` and its certificate, or (``tol`` given) the smallest degree whose
    certified output bound meets ``tol`` (:func:`_degree_for_tolerance`)."""
    if degree is None:
        return _degree_for_tolerance(tol, certify)
    return degree, certify(degree)


def plan_from_certificate(certify: "Certifier", degree: int, certificate: "_Certificate", global_radius: np.ndarray,
                          batch: tuple, d: int, *, seconds: float, nbytes: int, chunk: int) -> PolyPlan:
    """The :class:`PolyPlan` of a certified degree: per-row arrays (B, n[, ·]) reshaped to the
    caller's leading dimensions ``batch``."""
    coefficients, epsilon, kappa, output_bound, rounding_bound = certificate
    n, dv = output_bound.shape[1:]
    return PolyPlan(
        family=certify.family, degree=int(degree), rank=int(rank(d, degree)),
        radius=certify.radius.reshape(batch + (n,)), global_radius=float(global_radius.max()),
        epsilon=epsilon.reshape(batch + (n,)), coefficients=coefficients.reshape(batch + (n, degree + 1)),
        kappa=kappa.reshape(batch + (n,)),
        output_bound=output_bound.reshape(batch + (n, dv)), max_output_bound=float(output_bound.max()),
        estimated_seconds=seconds, estimated_bytes=int(nbytes), chunk_rows=chunk,
        rounding_bound=rounding_bound.reshape(batch + (n, dv)),
    )


#: Relative slack on every certified bound for the rounding of the bound's own arithmetic
#: (sums of at most ~10^7 non-negative terms: γ < 10^-9).
BOUND_SLACK = 1.0 + 1e-9


class _Certificate(NamedTuple):
    coefficients: np.ndarray
    epsilon: np.ndarray
    kappa: np.ndarray
    output_bound: np.ndarray
    rounding_bound: np.ndarray


class Certifier:
    """The certificate of a degree for fixed inputs, any number t of key sets: per-row fits, κ,
    and the output bound κ·range/2 + rounding (:mod:`.rounding`), all (B, n[, dv]).

    ``radius`` (B, n) are the certified grid radii, ``ranges`` (B, dv) the ranges of the values'
    tuple products (:func:`product_ranges`), ``values`` (B, dv) Π_a max|Va[:, m]|, ``dtype`` the
    output dtype and ``rounding(coefficients, epsilon, degree)`` the :class:`.rounding.RowRounding`
    of a degree's fits (:func:`.rounding.row_rounding` for t = 2, :func:`.rounding.tuple_rounding`
    in general); ``products`` names the value products in messages."""

    def __init__(self, family: str, radius: np.ndarray, ranges: np.ndarray, values: np.ndarray, dtype,
                 rounding, products: str = "V1·V2"):
        self.family, self.radius, self.ranges = family, radius, ranges
        self.values, self.dtype, self.rounding, self.products = values, dtype, rounding, products

    def __call__(self, degree: int) -> _Certificate:
        coefficients, epsilon = per_row_fits(self.family, degree, self.radius)
        kappa = kappa_for_epsilon(epsilon)
        rounding_bound = output_rounding(self.rounding(coefficients, epsilon, degree), self.values, self.dtype)
        return _Certificate(coefficients, epsilon, kappa,
                            BOUND_SLACK * (polynomial_output_bound(kappa, self.ranges) + rounding_bound),
                            BOUND_SLACK * rounding_bound)

    def floor(self, certificate: _Certificate) -> tuple[float, str]:
        """The smallest output bound rounding allows for ``certificate`` and a sentence on its cause."""
        rounding = certificate.rounding_bound
        worst = np.unravel_index(int(np.argmax(rounding)), rounding.shape)
        floor = float(rounding[worst])
        value = float(self.values[worst[0], worst[2]])
        u_out = unit_roundoff(self.dtype)
        if self.dtype != np.float64 and u_out * value >= 0.25 * floor:
            cause = (f"the resolution of the {self.dtype} output: u = 2^-24 times max|{self.products}| = {value:.3g} "
                     "(pass float64 inputs for a tighter certificate)")
        else:
            radius = float(self.radius[worst[:2]])
            cause = (f"float64 rounding of the surrogate's sums, amplified by the polynomial's cancellation "
                     f"(about e^(2R) at logit radius R = {radius:.3g}) and the value magnitude "
                     f"max|{self.products}| = {value:.3g}; use method='exact'")
        return floor, cause


def _pair_certifier(inputs: AttentionInputs, stats: InputStatistics, family: str, radius: np.ndarray,
                    ranges: np.ndarray, budget: int) -> Certifier:
    """The :class:`Certifier` of a trilinear (t = 2) problem with its mask."""
    n, d = inputs.Q.shape[1:]
    m1, m2 = inputs.K1.shape[1], inputs.K2.shape[1]

    def rounding(coefficients, epsilon, degree):
        # the windowed scans restart per chunk: their rounding depends on the chunk the plan will use
        chunk = _chunk_for(inputs, degree, budget) if inputs.mask.narrow_window(n) else None
        return row_rounding(coefficients, radius, epsilon, degree=degree, rank=rank(d, degree), n=n, m1=m1, m2=m2,
                            mask=inputs.mask, chunk=chunk)

    values = np.maximum(stats.V1_max, -stats.V1_min) * np.maximum(stats.V2_max, -stats.V2_min)
    return Certifier(family, radius, ranges, values, inputs.dtype, rounding)


def check_certified(plan: PolyPlan) -> None:
    """Raise ``ValueError`` (with the degree to use instead) when some row's certified relative
    error reaches 1: its polynomial may then be non-positive and the surrogate meaningless."""
    worst = float(np.max(plan.epsilon))
    if not worst < 1.0:
        widest = float(np.max(plan.radius))
        try:
            advice = f"use degree >= {exp_approx.min_degree(plan.family, widest, 0.5)} or pass tol"
        except ValueError:
            advice = "no degree is certified at this radius in float64; use method='exact'"
        raise ValueError(
            f"degree {plan.degree} is too low for these inputs: the certified relative error of the "
            f"{plan.family} polynomial reaches {worst:.3g} >= 1 (logit radius up to {widest:.3g}); {advice}"
        )
    if plan.rounding_bound is not None and not np.all(np.isfinite(plan.rounding_bound)):
        raise ValueError(
            f"degree {plan.degree} cannot be certified for these inputs: float64 rounding of the surrogate's "
            f"sums, amplified by the polynomial's cancellation (about e^(2R) at logit radius up to "
            f"{float(np.max(plan.radius)):.3g}), may reach the normaliser itself; use method='exact' or smaller inputs"
        )


def normaliser_error(plan: PolyPlan) -> ValueError:
    """The error raised when a surrogate normaliser w̃_i is not positive and finite."""
    return ValueError(
        f"the degree-{plan.degree} {plan.family} polynomial is not accurate enough for these inputs "
        f"(certified relative error up to {float(np.max(plan.epsilon)):.3g}, normaliser not positive); "
        "raise degree or pass tol"
    )


def check_normaliser(w: np.ndarray, plan: PolyPlan) -> None:
    """Raise :func:`normaliser_error` unless every entry of the host array ``w`` is positive and finite."""
    if not np.all(np.isfinite(w)) or np.any(w <= 0.0):
        raise normaliser_error(plan)


def _scanned(mask: Mask) -> bool:
    """Whether the surrogate runs the prefix scans of :mod:`.causal` for ``mask`` (every mask but
    the full one; :func:`make_plan` refuses masks the scans do not cover)."""
    return not mask.is_full


def keeps_key_summaries(for_backward: bool, mask: Mask, batch: int, plan: PolyPlan, d: int, dv: int,
                        memory_budget, held_bytes: int = 0) -> bool:
    """Whether the forward saves the wide key summaries U^T[1 | V | K | V⊙K] (2·B·r·(1 + dv + d +
    dv·d) floats) for the backward: only for the full mask (no prefix scans) and when they fit
    a quarter of the memory budget left beside ``held_bytes`` (the operand copies of
    :func:`tattn_numba.attention.kernel_inputs`)."""
    budget = config.MEMORY_BUDGET_BYTES if memory_budget is None else check_memory_budget(memory_budget)
    budget -= held_bytes
    wide = SummaryLayout(d, dv).wide
    return for_backward and not _scanned(mask) and 2 * 8 * batch * plan.rank * wide <= budget // 4


def _budgeted_chunk(inputs: AttentionInputs, degree: int, budget: int, chosen: bool = True) -> tuple[int, int]:
    """(chunk rows, :func:`memory_estimate`) for ``degree``; ``ValueError`` when the estimate
    passes ``budget`` (``chosen=False``: degree 0 as a lower bound for the degree ``tol`` will pick)."""
    B, n, d = inputs.Q.shape
    dv = inputs.V1.shape[2]
    m1, m2 = inputs.K1.shape[1], inputs.K2.shape[1]
    r = rank(d, degree)
    available = budget - inputs.held_bytes  # the lifted or expanded operands stay alive through the call
    shape = _estimate_shape(inputs, degree, available)
    rows = chunk_rows(r, d, dv, available, **shape)
    nbytes = memory_estimate(r, d, dv, rows, **shape) + inputs.held_bytes
    if nbytes > budget:
        problem = f"B={B}, n={n}, m1={m1}, m2={m2}, d={d}, dv={dv}{'' if inputs.mask.is_full else ', ' + inputs.mask.describe()}"
        if inputs.held_bytes:
            problem += f"; {format_bytes(inputs.held_bytes)} of it for {inputs.copied_operands}"
        raise memory_refusal(nbytes, budget, problem, degree, r, chosen)
    return rows, nbytes


def memory_refusal(nbytes: int, budget: int, problem: str, degree: int, r: int, chosen: bool) -> ValueError:
    """The ``ValueError`` for a surrogate whose memory estimate ``nbytes`` passes ``budget``:
    for the chosen ``degree`` (rank ``r``), or (``chosen=False``) at any degree."""
    needed, allowed = format_byte_pair(nbytes, budget)
    if chosen:
        return ValueError(
            f"degree {degree} needs rank r = C(d + g, g) = {r} and about {needed} for {problem}, above "
            f"the memory budget of {allowed}; lower the degree, loosen tol, or raise memory_budget"
        )
    return ValueError(
        f"the surrogate needs at least {needed} for {problem} (at any degree), above the memory budget "
        f"of {allowed}; raise memory_budget (or TATTN_NUMBA_MEMORY_BUDGET) or split the batch"
    )


def _estimate_shape(inputs: AttentionInputs, degree: int, budget: int) -> dict:
    """The keywords of :func:`memory_estimate` (and :func:`chunk_rows`) for ``inputs`` at ``degree``."""
    B, n, d = inputs.Q.shape
    dv = inputs.V1.shape[2]
    m1, m2 = inputs.K1.shape[1], inputs.K2.shape[1]
    r = rank(d, degree)
    scanned = _scanned(inputs.mask)
    widths = inputs.mask.narrow_window(n)
    return dict(n=n, m1=m1, m2=m2, batch=B, causal=scanned, degree=int(degree),
                itemsize=np.dtype(inputs.dtype).itemsize, keep_summaries=_keeps_summaries(scanned, B, r, d, dv, budget),
                window=0 if widths is None else max(widths))


def _chunk_for(inputs: AttentionInputs, degree: int, budget: int) -> int:
    """The chunk rows :func:`_budgeted_chunk` picks for ``degree`` (without its refusal)."""
    B, n, d = inputs.Q.shape
    available = budget - inputs.held_bytes
    return chunk_rows(rank(d, degree), d, inputs.V1.shape[2], available, **_estimate_shape(inputs, degree, available))


def _keeps_summaries(causal: bool, batch: int, r: int, d: int, dv: int, budget: int) -> bool:
    """:func:`keeps_key_summaries` for a forward that feeds a backward, before the plan exists
    (``causal``: whether the prefix scans run)."""
    class _Rank(NamedTuple):
        rank: int

    return keeps_key_summaries(True, Mask(causal=causal), batch, _Rank(r), d, dv, budget)


def epsilon_for_tolerance(tol: float, widest_range: float) -> float:
    """The polynomial relative error ε whose certificate κ·range/2 (κ = 2ε/(1 − ε)) meets
    max |Õ − O| <= ``tol`` for values whose pair products span ``widest_range``. When every
    pair carries the same value any positive weights are exact, so only ε < 1 is asked (0.5)."""
    if widest_range == 0.0:
        return 0.5
    kappa = 2.0 * tol / widest_range
    return kappa / (2.0 + kappa)


def _degree_for_tolerance(tol, certify: Certifier) -> tuple[int, _Certificate]:
    """Smallest degree whose certified output bound (polynomial error plus rounding) is <= tol.

    The polynomial's share starts at ``tol`` and shrinks by the rounding bound found at the
    degree tried, so a few rounds settle it; every refusal names the caller's ``tol``."""
    widest = float(certify.ranges.max())
    radius = float(certify.radius.max())
    share, degree = tol, 0
    for _ in range(16):
        epsilon_target = epsilon_for_tolerance(share, widest)
        if not epsilon_target > 0.0:
            raise ValueError(
                f"tol={tol!r} is unreachable: the products {certify.products} of the values span {widest:.3g}, "
                f"so the weights would need a relative error below {share / widest:.3g}, under float64's "
                "resolution; use a larger tol or rescale the values"
            )
        try:
            needed = int(exp_approx.min_degree(certify.family, radius, epsilon_target))
        except ValueError:
            best = min(float(exp_approx.relative_error_bound(certify.family, g, radius)) for g in range(61))
            raise ValueError(
                f"tol={tol!r} is unreachable at logit radius {radius:.3g} with the {certify.family} family: "
                f"it needs exp approximated to relative error {epsilon_target:.3g} (values spanning "
                f"{widest:.3g}), but the best certified relative error of any degree <= 60 is {best:.3g} "
                "(float64's floor grows like e^(2R)); use a larger tol, smaller inputs or method='exact'"
            ) from None
        degree = max(needed, degree)
        certificate = certify(degree)
        if float(certificate.output_bound.max()) <= tol:
            return degree, certificate
        floor, cause = certify.floor(certificate)
        if floor >= tol or degree >= exp_approx.MAX_DEGREE:
            raise ValueError(
                f"tol={tol!r} is unreachable: the certified rounding error of the surrogate's output alone "
                f"is {floor:.3g} (degree {degree}), from {cause}; use a larger tol"
            )
        share = (tol - floor) / BOUND_SLACK
    raise ValueError(f"tol={tol!r} is unreachable: no degree up to {degree} certifies it together with rounding")


def gradient_bounds(inputs: AttentionInputs, computed: AttentionInputs, plan: PolyPlan, O: np.ndarray | None,
                    dO: np.ndarray, lse: np.ndarray | None = None) -> GradientBounds:
    """Certified bounds on the surrogate gradients' entrywise error; O((n+m1+m2)·d·dv).

    ``inputs`` are the validated caller inputs, ``computed`` the kernel inputs the surrogate ran
    on (:func:`tattn_numba.attention.kernel_inputs`: Q expanded where it broadcasts, Q, K1, K2
    lifted for ``logits="determinant"``) and ``plan`` its plan; ``O`` (the computed float64
    output, or None before the forward has run), ``dO`` (B, n, dv) and ``lse`` (B, n) are batch
    entries of ``computed``. Returns batch-flattened bounds shaped like the caller's gradients:
    dQ (Bq, n, d), the key and value gradients (Bk, m, ·).

    Per batch entry of the computed (trilinear) problem, two parts, each derived in
    docs/math/rounding.rst and docs/surrogate.md. The polynomial's part: with |P̃ − P| <= κ_i·P
    (``plan.kappa``), the computed float64 output Õ and the upstream ``dO``,

        Δδ_i   = Σ_m |dO[i,m]|·β[i,m] + γ_dv·Σ_m |dO[i,m]·Õ[i,m]|,  β the output bound in float64
        c_i    = κ_i·(D_i + |δ̂_i|) + Δδ_i,   D_i = Σ_m |dO[i,m]|·max|V1_m|·max|V2_m| >= |dS|

    from dZ̃ − dZ = (P̃ − P)(dS − δ̂) + P(δ − δ̂), so |dZ̃ − dZ| <= c_i·P, and then
        |ΔdQ[i,l]|  <= s·c_i·max|K1_l|·max|K2_l|
        |ΔdK1[j,l]| <= s·max|K2_l|·Σ_i c_i·|Q[i,l]|        (dK2 likewise with K1)
        |ΔdV1[j,m]| <= max|V2_m|·Σ_i κ_i·|dO[i,m]|          (dV2 likewise with V1)
    The rounding part (the backward's float64 sums) is :func:`.rounding.gradient_rounding`; with
    the forward's ``lse`` it uses the computed normalisers as well as the a-priori e^{−R}
    (:func:`.rounding.row_rounding`).

    The other forms map these through what :func:`tattn_numba.attention.attention_backward` does
    after the kernels, each step in float64, carrying an error bound E and a bound C on the
    computed value's magnitude (the exact-arithmetic magnitudes of
    :func:`.rounding.gradient_magnitudes` plus the rounding part):

    * grouped or broadcast keys: the G entries sharing a key/value entry add their query summaries
      (or key gradients) up; the entries' bounds add, with (G − 1)·⌈n/chunk⌉ more roundings per term;
    * determinant logits: dX = dX'·M^T with M the ±1 lift, each coordinate the sum of c <= 2
      lifted ones: E ← E'·|M|^T + γ_{c−1}·C'·|M|^T, C ← (1 + γ_{c−1})·C'·|M|^T;
    * a broadcast Q: dQ summed over its G copies: E ← Σ E_b + γ_{G−1}·Σ C_b, C ← (1 + γ_{G−1})·Σ C_b;
    * the cast to float32: E ← E + u_out·C + 2^-150 (half the subnormal spacing).
    """
    heads = inputs.heads
    dtype = np.dtype(inputs.dtype)
    u_out, tiny = (0.0, 0.0) if dtype == np.float64 else (unit_roundoff(dtype), float(np.finfo(dtype).smallest_subnormal) / 2)
    if not (heads.shares_keys or heads.expands_query or inputs.logits != "trilinear"):
        polynomial, rounded, _ = _entry_bounds(computed, plan, O, dO, lse, output_dtype=inputs.dtype)
        return GradientBounds(*(BOUND_SLACK * (a + b + tiny) for a, b in zip(polynomial, rounded)))
    n = computed.Q.shape[1]
    extra = (heads.group - 1) * -(-n // plan.chunk_rows)
    polynomial, rounded, magnitude = _entry_bounds(computed, plan, O, dO, lse, output_dtype=np.float64,
                                                   key_roundings=extra, magnitudes=True)
    error = [a + b for a, b in zip(polynomial, rounded)]
    size = [a + b for a, b in zip(magnitude, rounded)]
    sum_key_groups(heads, error, size)
    if inputs.logits != "trilinear":
        for k, M in enumerate(lift_matrices(inputs.logits, inputs.Q.shape[2])):
            error[k], size[k] = _pulled_back(error[k], size[k], M)
    error[0], size[0] = sum_query_copies(heads, error[0], size[0])
    with np.errstate(invalid="ignore", over="ignore"):
        return GradientBounds(*(BOUND_SLACK * (e + u_out * c + tiny) for e, c in zip(error, size)))


def sum_key_groups(heads, error: list, size: list) -> None:
    """In place: the per-entry error and magnitude bounds of the key and value gradients
    (``error[1:]``, ``size[1:]``, (B, m, ·) each) summed over the entries that share a key/value
    entry (``heads.key_batch``), as the backward sums them in float64; its additions are counted
    by the caller's extra key roundings ((G − 1)·⌈n/chunk⌉)."""
    for k in range(1, len(error)):
        error[k] = _summed(error[k], heads.key_batch, heads.key_entries)
        size[k] = _summed(size[k], heads.key_batch, heads.key_entries)


def sum_query_copies(heads, error: np.ndarray, size: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """dQ's error and magnitude bounds (B, n, d) mapped onto Q's entries (Bq, n, d) when Q
    broadcasts: the float64 sum over its copies, E ← Σ E_b + γ_{G−1}·Σ C_b, C ← (1 + γ_{G−1})·Σ C_b;
    unchanged otherwise."""
    if not heads.expands_query:
        return error, size
    copies = np.bincount(heads.query_batch, minlength=heads.query_entries)
    g = gamma(copies - 1)[:, None, None]
    total = _summed(size, heads.query_batch, heads.query_entries)
    return _summed(error, heads.query_batch, heads.query_entries) + g * total, (1.0 + g) * total


def _summed(x: np.ndarray, index: np.ndarray, count: int) -> np.ndarray:
    """``out[c] = Σ_{b: index[b] = c} x[b]`` (float64, (count, ...)) for non-negative bounds."""
    out = np.zeros((count,) + x.shape[1:])
    np.add.at(out, index, x)
    return out


def _pulled_back(error: np.ndarray, size: np.ndarray, M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Error and magnitude bounds (..., d) of dX = fl(dX'·M^T) from those of dX' (..., d'), M the
    ±1 lift (d, d'), one non-zero per column: coordinate l sums the c_l lifted columns copied
    from it (products with ±1 and 0 are exact), so it adds γ_{c_l − 1} of its magnitude."""
    source = np.argmax(M != 0.0, axis=0)
    pulled_error = np.zeros(error.shape[:-1] + (M.shape[0],))
    pulled_size = np.zeros_like(pulled_error)
    for column, l in enumerate(source):  # adds, never products: an infinite bound stays infinite
        pulled_error[..., l] += error[..., column]
        pulled_size[..., l] += size[..., column]
    g = gamma(np.count_nonzero(M, axis=1) - 1)
    return pulled_error + g * pulled_size, (1.0 + g) * pulled_size


def _entry_bounds(inputs: AttentionInputs, plan: PolyPlan, O: np.ndarray | None, dO: np.ndarray,
                  lse: np.ndarray | None, *, output_dtype, key_roundings: int = 0,
                  magnitudes: bool = False) -> tuple[tuple, tuple, tuple | None]:
    """Per batch entry of the trilinear problem ``inputs`` (the kernel inputs): the polynomial
    part and the rounding part (cast to ``output_dtype`` included) of the gradient bounds of
    :func:`gradient_bounds`, and with ``magnitudes`` the bounds on the exact-arithmetic
    surrogate gradients (:func:`.rounding.gradient_magnitudes`), each (dQ, dK1, dK2, dV1, dV2)
    with the key and value gradients per batch entry (B, m, ·), not yet summed over groups."""
    B, n, d = inputs.Q.shape
    m1, m2 = inputs.K1.shape[1], inputs.K2.shape[1]
    Q = inputs.Q.astype(np.float64)
    kb = inputs.key_batch
    V1, V2 = inputs.V1.astype(np.float64)[kb], inputs.V2.astype(np.float64)[kb]
    s = inputs.scale
    kappa = np.asarray(plan.kappa).reshape(B, n)
    k1, k2 = column_abs_max(inputs.K1)[kb], column_abs_max(inputs.K2)[kb]
    v1, v2 = column_abs_max(V1), column_abs_max(V2)
    # the output bound without the cast: what δ̂ = rowsum(dO ∘ Õ) inherits in float64
    coefficients = np.asarray(plan.coefficients).reshape(B, n, -1)
    radius, epsilon = np.asarray(plan.radius).reshape(B, n), np.asarray(plan.epsilon).reshape(B, n)
    rounding = row_rounding(coefficients, radius, epsilon, degree=plan.degree, rank=plan.rank,
                            n=n, m1=m1, m2=m2, mask=inputs.mask, lse=lse, chunk=plan.chunk_rows)
    values = v1 * v2
    beta = BOUND_SLACK * (polynomial_output_bound(kappa, value_ranges(V1, V2))
                          + output_rounding(rounding, values, np.float64))
    polynomial, dZ_mass = polynomial_gradient_bounds(Q, dO, kappa, [k1, k2], [v1, v2], beta, O, (m1, m2), s)
    terms = dict(scale=s, Q_abs=np.abs(Q), dO_abs=np.abs(dO), dZ_mass=dZ_mass, k1=k1, k2=k2, v1=v1, v2=v2,
                 m1=m1, m2=m2, mask=inputs.mask)
    rounded = gradient_rounding(rounding, **terms, chunk=plan.chunk_rows, degree=plan.degree, rank=plan.rank,
                                output_dtype=output_dtype, key_roundings=key_roundings)
    return polynomial, rounded, gradient_magnitudes(rounding, **terms) if magnitudes else None


def polynomial_gradient_bounds(Q: np.ndarray, dO: np.ndarray, kappa: np.ndarray, key_max: list, value_max: list,
                               beta: np.ndarray, O: np.ndarray | None, lengths, scale: float) -> tuple[tuple, np.ndarray]:
    """The polynomial's part of the gradient bounds for t key sets, and dZ_mass (B, n).

    ``Q`` (B, n, d) and ``dO`` (B, n, dv) float64, ``kappa`` (B, n) the weights' relative error,
    ``key_max``/``value_max`` the t column maxima of |Ka| (B, d) and |Va| (B, dv), ``beta``
    (B, n, dv) the float64 output bound, ``O`` the computed output (None before the forward:
    then Π_a v_a + β bounds it), ``lengths`` the m_a. With D_i = Σ_m |dO[i,m]|·Π_a v_{a,m} >= |dS|,
    |δ̂_i| and Δδ_i = Σ_m |dO[i,m]|·β[i,m] + γ_dv·|δ̂_i|, c_i = κ_i·(D_i + |δ̂_i| + Δδ_i) + Δδ_i
    bounds |dZ̃ − dZ| / P, so (marginals of P at most 1)

        |ΔdQ[i,l]| <= s·c_i·Π_a κ_{a,l},   |ΔdK_a[j,l]| <= s·Π_{b≠a} κ_{b,l}·Σ_i c_i·|Q[i,l]|,
        |ΔdV_a[j,m]| <= Π_{b≠a} v_{b,m}·Σ_i κ_i·|dO[i,m]|

    (t = 2: see :func:`gradient_bounds`). Returns ``((dQ, dK_1, …, dK_t, dV_1, …, dV_t), dZ_mass)``
    with dZ_mass = D + |δ̂| + Δδ, the |dS − δ̂| bound of the rounding part.
    """
    B, n, d = Q.shape
    dv = dO.shape[2]
    abs_dO = np.abs(dO)
    values = reduce(np.multiply, value_max)
    magnitude = values[:, None, :] + beta if O is None else np.abs(O)
    delta = np.einsum("bnm,bnm->bn", abs_dO, magnitude) * (1.0 + float(gamma(dv)))
    d_delta = np.einsum("bnm,bnm->bn", abs_dO, beta) + float(gamma(dv)) * delta
    D = np.einsum("bnm,bm->bn", abs_dO, values)
    c = kappa * (D + delta + d_delta) + d_delta
    dQ = scale * c[:, :, None] * reduce(np.multiply, key_max)[:, None, :]
    cq = np.einsum("bn,bnl->bl", c, np.abs(Q))
    kd = np.einsum("bn,bnm->bm", kappa, abs_dO)
    dkeys, dvalues = [], []
    for a, m in enumerate(lengths):
        other_keys = reduce(np.multiply, [k for b, k in enumerate(key_max) if b != a], scale)
        other_values = [v for b, v in enumerate(value_max) if b != a]
        dkeys.append(np.broadcast_to((other_keys * cq)[:, None, :], (B, m, d)))
        dvalues.append(np.broadcast_to(((reduce(np.multiply, other_values) if other_values else 1.0) * kd)[:, None, :],
                                       (B, m, dv)))
    return (dQ, *dkeys, *dvalues), D + delta + d_delta
