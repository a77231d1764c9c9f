"""Polynomial surrogates of the exponential (SPEC §5).

:mod:`tattn_numba.poly.exp_approx` gives, per radius R (one per query row), the monomial
coefficients in y = x/R of a degree-g polynomial P ≈ e^x on [−R, R] ("taylor" or "chebyshev"),
a certified relative error bound for its float64 evaluation, and the smallest degree meeting a
tolerance.
"""

from .exp_approx import FAMILIES, MAX_DEGREE, MAX_RADIUS, exp_coefficients, min_degree, relative_error_bound

__all__ = ["FAMILIES", "MAX_DEGREE", "MAX_RADIUS", "exp_coefficients", "min_degree", "relative_error_bound"]
