"""Tests for tattn_numba.poly.exp_approx: polynomial approximations of e^x and their certified bounds.

The ground truth is plain NumPy: P is evaluated with ``numpy.polynomial.polynomial.polyval`` (Horner)
on y = x/R, e^x with ``numpy.exp``, on a dense grid of [-R, R] with both endpoints. The Chebyshev
coefficients are also checked against ``numpy.polynomial.chebyshev.chebinterpolate`` (an independent
construction) and against the interpolation property itself.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.polynomial import chebyshev as C
from numpy.polynomial import polynomial as Pm

from tattn_numba.poly import (
    FAMILIES,
    MAX_RADIUS,
    exp_coefficients,
    min_degree,
    relative_error_bound,
)

U = 2.0**-53
RADII = (0.0, 1e-3, 0.5, 1.0, 3.0, 8.0, 16.0)
DEGREES = range(31)
GRID = 20001


def measured_relative_error(family: str, degree: int, R: float) -> float:
    """Worst |P(x) - e^x| / e^x on GRID points of [-R, R] plus both endpoints (float64, Horner)."""
    x = np.concatenate([np.linspace(-R, R, GRID), [-R, R]])
    y = x / R if R > 0 else np.zeros_like(x)  # at R = 0 every |y| <= 1 gives P = 1
    a = exp_coefficients(family, degree, R)
    ex = np.exp(x)
    return float(np.max(np.abs(Pm.polyval(y, a) - ex) / ex))


def fp_floor(R: float) -> float:
    """A generous scale of the float64 floor of the monomial form: 64 u e^(2R)."""
    return 64.0 * U * math.exp(2.0 * R)


@pytest.fixture(scope="module")
def sweep():
    """{(family, R): (errors over DEGREES, bounds over DEGREES)}, computed once (~0.5 s)."""
    out = {}
    for family in FAMILIES:
        for R in RADII:
            errs = np.array([measured_relative_error(family, g, R) for g in DEGREES])
            bounds = np.array([relative_error_bound(family, g, R) for g in DEGREES])
            out[family, R] = errs, bounds
    return out


# ------------------------------------------------------------------------------------------------
# the bound holds, and it is not vacuous
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("R", RADII)
@pytest.mark.parametrize("family", FAMILIES)
def test_measured_error_within_certified_bound(sweep, family, R):
    errs, bounds = sweep[family, R]
    assert np.all(np.isfinite(bounds)) and np.all(bounds > 0)
    # numpy.exp itself is off by at most ~1 ulp: allow 2u on the reference (and 4u on the denominator)
    allowed = (bounds + 2 * U) * (1 + 4 * U)
    bad = [(g, errs[g], bounds[g]) for g in DEGREES if not errs[g] <= allowed[g]]
    assert not bad, f"bound violated (degree, measured, bound): {bad}"


@pytest.mark.parametrize("R", RADII)
@pytest.mark.parametrize("family", FAMILIES)
def test_error_nonincreasing_in_degree_until_floor(sweep, family, R):
    """Once P is a meaningful relative approximation (error < 1), raising the degree never hurts
    until the float64 floor is reached. (Below that, e.g. degree 1 at R = 8, P(-R) = 1 - R is far
    off and the relative error does grow with the first few degrees.)"""
    errs, _ = sweep[family, R]
    floor = fp_floor(R)
    for g in range(len(errs) - 1):
        if floor < errs[g] < 1.0:
            assert errs[g + 1] <= errs[g] * (1 + 1e-9), (g, errs[g], errs[g + 1])


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("R", [1e-3, 0.5, 1.0])
def test_small_radius_reaches_roundoff(sweep, family, R):
    """Measured: <= 4.5e-16 from degree 18 on (Taylor at R = 1: 1.2e-13 at degree 15)."""
    errs, bounds = sweep[family, R]
    assert errs[18] <= 1e-15
    assert errs[18:].max() <= 1e-15  # and stays there: no growth of the floor with the degree
    assert bounds[18] <= 1e-13  # the certified bound reaches the float64 floor too


TIGHT_CASES = [  # (family, R, degrees): bound far above round-off, degree >= R
    ("taylor", 0.5, range(1, 11)),
    ("taylor", 1.0, range(2, 12)),
    ("taylor", 3.0, range(3, 21)),
    ("taylor", 8.0, range(8, 31)),
    ("taylor", 16.0, range(16, 31)),
    ("chebyshev", 0.5, range(1, 9)),
    ("chebyshev", 1.0, range(2, 11)),
    ("chebyshev", 3.0, range(3, 16)),
    ("chebyshev", 8.0, range(8, 23)),
    ("chebyshev", 16.0, range(16, 30)),
]


@pytest.mark.parametrize(("family", "R", "degrees"), TIGHT_CASES)
def test_bound_is_tight(sweep, family, R, degrees):
    """Measured here: Taylor bound/error in [1.04, 1.91]; Chebyshev in [1.7, 8.1] for g >= R and
    at most 4.5 once g >= 2R. A bound that could never fail would not be a test."""
    errs, bounds = sweep[family, R]
    for g in degrees:
        assert bounds[g] > 1e3 * fp_floor(R)  # the case really is far above round-off
        ratio = bounds[g] / errs[g]
        assert ratio >= 1.0
        if family == "taylor":
            assert ratio <= 2.0, (g, ratio)
        else:
            assert ratio <= (4.5 if g >= 2 * R else 8.5), (g, ratio)


@settings(deadline=None)
@given(
    family=st.sampled_from(FAMILIES),
    g=st.integers(min_value=0, max_value=40),
    R=st.floats(min_value=0.0, max_value=20.0, allow_nan=False, allow_infinity=False),
)
def test_bound_holds_for_random_degree_and_radius(family, g, R):
    x = np.concatenate([np.linspace(-R, R, 2001), [-R, R]])
    y = x / R if R > 0 else np.zeros_like(x)
    ex = np.exp(x)
    err = float(np.max(np.abs(Pm.polyval(y, exp_coefficients(family, g, R)) - ex) / ex))
    assert err <= (relative_error_bound(family, g, R) + 2 * U) * (1 + 4 * U)


def test_chebyshev_bessel_bound_beats_classical_remainder():
    """Regression: the Bessel-tail bound, not the classical e^{2R} R^N/(2^g N!), is in force once
    N >> R (it is smaller by about e^R/2)."""
    R, g = 8.0, 24
    N = g + 1
    classical = math.exp(2 * R + N * math.log(R) - g * math.log(2) - math.lgamma(N + 1))
    b = relative_error_bound("chebyshev", g, R)
    assert b < classical / 100
    assert b >= measured_relative_error("chebyshev", g, R)


def test_bound_large_radii_no_overflow_no_nan():
    radii = np.array([0.0, 1.0, 17.0, 30.0, 45.0, 60.0])
    for family in FAMILIES:
        for g in (0, 1, 5, 20, 40):
            b = relative_error_bound(family, g, radii)
            assert np.all(np.isfinite(b)), (family, g, b)
        # beyond the usable range: >= 1 (useless) but still a number
        assert relative_error_bound(family, 40, 60.0) > 1.0
    huge = relative_error_bound("chebyshev", 10, np.array([699.0, 700.0, 701.0, 1e6]))
    assert not np.isnan(huge).any() and np.all(huge >= 1.0)
    assert np.isinf(huge[2:]).all()


def test_radius_zero_and_degree_zero():
    for family in FAMILIES:
        for g in (0, 1, 7):
            a = exp_coefficients(family, g, 0.0)
            expected = np.zeros(g + 1)
            expected[0] = 1.0
            np.testing.assert_array_equal(a, expected)
            assert relative_error_bound(family, g, 0.0) <= 1e-14
        assert exp_coefficients(family, 0, 2.0).shape == (1,)
    # degree 0: Taylor P = 1; Chebyshev interpolates at the single node y = 0, also P = 1
    assert exp_coefficients("taylor", 0, 2.0)[0] == 1.0
    assert exp_coefficients("chebyshev", 0, 2.0)[0] == 1.0
    # bound for P = 1 must cover the true relative error e^R - 1
    for family in FAMILIES:
        assert relative_error_bound(family, 0, 2.0) >= math.expm1(2.0)


# ------------------------------------------------------------------------------------------------
# the coefficients themselves
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("R", [0.25, 1.0, 3.0])
@pytest.mark.parametrize("g", [0, 1, 2, 5, 8])
def test_chebyshev_matches_numpy_interpolant(R, g):
    """Independent construction: DCT of the node values (chebinterpolate), then cheb2poly."""
    ref = C.cheb2poly(C.chebinterpolate(lambda y: np.exp(R * y), g))
    a = exp_coefficients("chebyshev", g, R)
    # the numpy route loses ~ u·|T_k(i)|·e^R per coefficient; ours is far more accurate
    np.testing.assert_allclose(a, ref, rtol=0, atol=1e-12 * math.exp(R))


@pytest.mark.parametrize("R", [0.5, 4.0, 10.0])
@pytest.mark.parametrize("g", [3, 12, 25])
def test_chebyshev_interpolates_at_first_kind_nodes(R, g):
    nodes = np.cos((2 * np.arange(g + 1) + 1) * np.pi / (2 * g + 2))
    a = exp_coefficients("chebyshev", g, R)
    vals = Pm.polyval(nodes, a)
    # at the nodes only rounding separates P from e^{Ry}: bounded by the float64 floor
    tol = 64 * (g + 1) * U * float(np.abs(a).sum()) * math.exp(R) + 1e-15
    np.testing.assert_allclose(vals / np.exp(R * nodes), 1.0, rtol=0, atol=tol)


def test_taylor_coefficients_exact_formula():
    for R in (0.5, 3.0, 8.0):
        a = exp_coefficients("taylor", 12, R)
        expected = np.array([R**t / math.factorial(t) for t in range(13)])
        np.testing.assert_allclose(a, expected, rtol=30 * U, atol=0)


@settings(deadline=None)
@given(
    half=st.integers(min_value=0, max_value=20),
    R=st.floats(min_value=0.0, max_value=30.0, allow_nan=False, allow_infinity=False),
    y=st.floats(min_value=-2.0, max_value=2.0, allow_nan=False, allow_infinity=False),
)
def test_even_degree_taylor_is_positive_everywhere(half, R, y):
    """SPEC §5: an even-degree Taylor polynomial has no real root (also outside [-R, R])."""
    g = 2 * half
    a = exp_coefficients("taylor", g, R)
    y_eff = y if R > 0 else 0.0
    assert Pm.polyval(y_eff, a) > 0.0  # as evaluated in float64
    exact = sum(Fraction(float(c)) * Fraction(y_eff) ** t for t, c in enumerate(a))
    assert exact > 0  # and exactly, for the float coefficients actually returned


# ------------------------------------------------------------------------------------------------
# vectorisation over radii
# ------------------------------------------------------------------------------------------------
VEC_RADII = np.array([0.0, 1e-3, 0.5, 1.0, 2.5, 3.0, 8.0, 16.0, 60.0, 1e-300, 0.0, 7.25])


@pytest.mark.parametrize("g", [0, 1, 7, 20, 40])
@pytest.mark.parametrize("family", FAMILIES)
def test_vectorised_equals_scalar_row_by_row(family, g):
    A = exp_coefficients(family, g, VEC_RADII)
    B = relative_error_bound(family, g, VEC_RADII)
    assert A.shape == (VEC_RADII.size, g + 1) and A.dtype == np.float64
    assert B.shape == (VEC_RADII.size,) and B.dtype == np.float64
    for i, R in enumerate(VEC_RADII):
        np.testing.assert_array_equal(A[i], exp_coefficients(family, g, float(R)))
        assert B[i] == relative_error_bound(family, g, float(R))
    # also in a different order / with other neighbours
    perm = np.random.default_rng(7).permutation(VEC_RADII.size)
    np.testing.assert_array_equal(exp_coefficients(family, g, VEC_RADII[perm]), A[perm])


@pytest.mark.parametrize("family", FAMILIES)
def test_min_degree_vectorised_equals_scalar(family):
    radii = np.array([0.0, 1e-3, 0.5, 1.0, 2.0, 4.0, 6.3, 8.0])
    d = min_degree(family, radii, 1e-5)
    assert d.shape == radii.shape and d.dtype == np.int64
    assert [min_degree(family, float(R), 1e-5) for R in radii] == d.tolist()
    assert isinstance(min_degree(family, 1.0, 1e-5), int)


def test_scalar_and_empty_inputs():
    for family in FAMILIES:
        assert exp_coefficients(family, 4, 1.5).shape == (5,)
        assert exp_coefficients(family, 4, np.float32(1.5)).shape == (5,)
        assert exp_coefficients(family, 4, 2).shape == (5,)  # integer radius
        assert exp_coefficients(family, 4, np.array(1.5)).shape == (5,)  # 0-d array = scalar
        assert exp_coefficients(family, 4, np.array([1.5])).shape == (1, 5)
        assert exp_coefficients(family, 4, np.empty(0)).shape == (0, 5)
        assert relative_error_bound(family, 4, np.empty(0)).shape == (0,)
        assert min_degree(family, np.empty(0), 1e-6).shape == (0,)
        assert isinstance(relative_error_bound(family, 4, 1.5), float)


# ------------------------------------------------------------------------------------------------
# min_degree
# ------------------------------------------------------------------------------------------------
TOLS = (1e-3, 1e-6, 1e-10)
TABLE_RADII = (1.0, 4.0, 8.0)
# R = 8 with tol = 1e-10 is below the float64 floor (tested in test_min_degree_unreachable_tolerance)
REACHABLE = [(R, tol) for R in TABLE_RADII for tol in TOLS if not (R == 8.0 and tol == 1e-10)]


@pytest.mark.parametrize(("R", "tol"), REACHABLE)
@pytest.mark.parametrize("family", FAMILIES)
def test_min_degree_is_smallest_certified_degree(family, R, tol):
    g = min_degree(family, R, tol)
    assert relative_error_bound(family, g, R) <= tol
    assert all(relative_error_bound(family, h, R) > tol for h in range(g))
    assert measured_relative_error(family, g, R) <= tol


@pytest.mark.parametrize(("R", "tol"), REACHABLE)
def test_chebyshev_needs_fewer_degrees_than_taylor(R, tol):
    """SPEC §5: about a third fewer. Measured (taylor -> chebyshev): R=1: 6->5, 9->8, 13->11;
    R=4: 17->12, 21->15, 27->20; R=8: 31->21, 36->25, unreachable at 1e-10."""
    gt = min_degree("taylor", R, tol)
    gc = min_degree("chebyshev", R, tol)
    assert gc < gt
    if R >= 4.0:
        assert gc <= 0.75 * gt


def test_min_degree_regression_table():
    expected = {
        ("taylor", 1.0): [6, 9, 13], ("chebyshev", 1.0): [5, 8, 11],
        ("taylor", 4.0): [17, 21, 27], ("chebyshev", 4.0): [12, 15, 20],
        ("taylor", 8.0): [31, 36], ("chebyshev", 8.0): [21, 25],
    }
    for (family, R), degs in expected.items():
        got = [min_degree(family, R, tol) for tol in TOLS[: len(degs)]]
        assert got == degs, (family, R, got)


@pytest.mark.parametrize("family", FAMILIES)
def test_min_degree_unreachable_tolerance(family):
    with pytest.raises(ValueError, match=r"tol=1e-10 is unreachable.*best certified.*floating-point floor"):
        min_degree(family, 8.0, 1e-10)
    with pytest.raises(ValueError, match="unreachable"):
        min_degree(family, 16.0, 1e-3)  # the floor is above 1 there
    with pytest.raises(ValueError, match=r"unreachable for 1 of 3 radii.*larger max_degree"):
        min_degree(family, np.array([0.1, 8.0, 0.2]), 1e-6, max_degree=10)
    with pytest.raises(ValueError, match="unreachable"):
        min_degree(family, MAX_RADIUS + 1.0, 0.5)


# ------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------
FUNCS = [
    lambda family="taylor", degree=3, radius=1.0: exp_coefficients(family, degree, radius),
    lambda family="taylor", degree=3, radius=1.0: relative_error_bound(family, degree, radius),
]


@pytest.mark.parametrize("f", FUNCS, ids=["exp_coefficients", "relative_error_bound"])
def test_bad_family_degree_radius(f):
    with pytest.raises(ValueError, match=r"family must be one of \('taylor', 'chebyshev'\)"):
        f(family="legendre")
    with pytest.raises(TypeError, match="family"):
        f(family=3)
    with pytest.raises(ValueError, match="degree"):
        f(degree=-1)
    with pytest.raises(TypeError, match="degree"):
        f(degree=2.5)
    with pytest.raises(TypeError, match="degree"):
        f(degree=True)
    with pytest.raises(ValueError, match="degree"):
        f(degree=10_000)
    with pytest.raises(ValueError, match="radius"):
        f(radius=-0.5)
    with pytest.raises(ValueError, match="radius"):
        f(radius=np.array([1.0, -1e-3]))
    with pytest.raises(ValueError, match="radius"):
        f(radius=float("nan"))
    with pytest.raises(ValueError, match="radius"):
        f(radius=np.array([1.0, np.inf]))
    with pytest.raises(ValueError, match="radius"):
        f(radius=np.ones((2, 2)))
    with pytest.raises(TypeError, match="radius"):
        f(radius=1 + 2j)
    with pytest.raises(TypeError, match="radius"):
        f(radius="1.0")
    with pytest.raises(TypeError, match="radius"):
        f(radius=True)


def test_exp_coefficients_rejects_radius_beyond_max():
    with pytest.raises(ValueError, match="radius must be <= 700"):
        exp_coefficients("chebyshev", 5, np.array([1.0, 701.0]))


def test_min_degree_bad_arguments():
    for tol in (0.0, -1e-3, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="tol"):
            min_degree("taylor", 1.0, tol)
    with pytest.raises(TypeError, match="tol"):
        min_degree("taylor", 1.0, "1e-3")
    with pytest.raises(ValueError, match="max_degree"):
        min_degree("taylor", 1.0, 1e-3, max_degree=-1)
    with pytest.raises(TypeError, match="max_degree"):
        min_degree("taylor", 1.0, 1e-3, max_degree=3.0)
    with pytest.raises(ValueError, match="family"):
        min_degree("cheb", 1.0, 1e-3)
    with pytest.raises(ValueError, match="radius"):
        min_degree("taylor", -1.0, 1e-3)


# --------------------------------------------------------------------------------------------------
# the family registry and the exact Chebyshev tables
# --------------------------------------------------------------------------------------------------
def test_families_registry_is_the_tuple_of_names_and_a_mapping():
    from tattn_numba.poly import exp_approx

    assert FAMILIES == ("taylor", "chebyshev")
    assert repr(FAMILIES) == "('taylor', 'chebyshev')"
    assert list(FAMILIES) == ["taylor", "chebyshev"] and len(FAMILIES) == 2
    assert "chebyshev" in FAMILIES and "legendre" not in FAMILIES and [1] not in FAMILIES
    assert FAMILIES["taylor"] is exp_approx.TAYLOR and FAMILIES["chebyshev"] is exp_approx.CHEBYSHEV
    assert FAMILIES.get("legendre") is None and FAMILIES.get(3) is None
    for name, family in FAMILIES.items():
        assert isinstance(family, exp_approx.Family) and family.name == name
    with pytest.raises(KeyError):
        FAMILIES["legendre"]


@pytest.mark.parametrize("g", [0, 1, 5, 20])
def test_chebyshev_truncation_order_is_smallest_meeting_two_to_minus_64(g):
    from tattn_numba.poly import exp_approx

    cheb = exp_approx.CHEBYSHEV
    R = np.array([1e-300, 1e-3, 0.5, 1.0, 8.0, 30.0, 150.0])
    S = cheb.truncation_order(g, R)
    assert (S >= g).all()
    assert (cheb.truncation_error(g, R, S) <= 2.0**-64).all()
    grown = S > g
    assert grown.any()
    assert (cheb.truncation_error(g, R[grown], S[grown] - 1) > 2.0**-64).all()
    assert (exp_approx.TAYLOR.truncation_order(g, R) == g).all()


@pytest.mark.parametrize("g", [0, 1, 4, 9])
def test_chebyshev_table_columns_are_exact_remainders(g):
    """Column s of the degree-g table is y^s mod ω, ω = 2^-g T_{g+1}, checked in exact rationals."""
    from tattn_numba.poly._chebyshev_tables import _cheb_table

    T = [Fraction(int(c)) for c in C.cheb2poly([0] * (g + 1) + [1])]  # T_{g+1}, integer coefficients
    omega = [c / 2**g for c in T]  # monic
    G, norms = _cheb_table(g).get(g + 6)
    p = [Fraction(0)] * g + [Fraction(1)]  # y^g
    for s in range(g + 7):
        if s > g:
            p = [Fraction(0)] + p  # y · p, degree g + 1
            lead = p[g + 1]
            p = [p[t] - lead * omega[t] for t in range(g + 1)]
        expect = [Fraction(1) if t == s else Fraction(0) for t in range(g + 1)] if s <= g else p
        assert [Fraction(float(x)) for x in G[:, s]] == [Fraction(float(e)) for e in expect]
        assert Fraction(float(norms[s])) >= sum(abs(e) for e in expect)  # rounded upwards
