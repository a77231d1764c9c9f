"""The a-priori bounds the surrogate certifies, and the theory's degree shape for comparison.

The certified quantities themselves live in the package (:mod:`tattn_numba.poly.exp_approx`,
:mod:`tattn_numba.poly.plan`); this module re-exports them under the names the report uses
and adds the asymptotic degree of Aggarwal–Alman (2022) that the theory predicts.
"""

from __future__ import annotations

import math

import numpy as np

from tattn_numba.poly.exp_approx import min_degree, relative_error_bound
from tattn_numba.poly.features import rank
from tattn_numba.poly.plan import column_extrema, epsilon_for_tolerance, kappa_for_epsilon, product_ranges

__all__ = [
    "relative_error_bound", "min_degree", "rank", "output_bound", "epsilon_for_output_tolerance",
    "theory_degree", "entry_threshold",
]


def output_bound(epsilon: float, value_range: float) -> float:
    """Certified max |Õ − O| for polynomial relative error ``epsilon`` (SPEC §5):
    κ·range/2 with κ = 2ε/(1 − ε)."""
    kappa = float(kappa_for_epsilon(epsilon))
    return math.inf if math.isinf(kappa) else kappa * value_range / 2.0


def epsilon_for_output_tolerance(tol: float, *values: np.ndarray) -> float:
    """The polynomial relative error ε that certifies max |Õ − O| <= ``tol`` (inverse of
    :func:`output_bound` with the range of the values' tuple products; ``values`` are the t
    value matrices (m_a, dv), V1 and V2 for tensor attention)."""
    extrema = [column_extrema(np.asarray(V, float)[None]) for V in values]
    widest = float(product_ranges([lo for lo, _ in extrema], [hi for _, hi in extrema]).max())
    return epsilon_for_tolerance(tol, widest)


def theory_degree(epsilon: float, radius: float) -> float:
    """Θ(max{log(1/ε)/log(log(1/ε)/R), R}): the degree needed for relative error ε on an
    interval of width 2R (Aggarwal–Alman 2022), without its constant. Where log(1/ε)/R <= e
    the first term is replaced by log(1/ε) (the formula's regime boundary)."""
    log_inv = math.log(1.0 / epsilon)
    ratio = log_inv / max(radius, 1e-300)
    first = log_inv / math.log(ratio) if ratio > math.e else log_inv
    return max(first, radius)


def entry_threshold(n: int, t: int = 2) -> float:
    """(ln n)^{1/(t+1)}: for attention over t key sets (t = 2: tensor attention) entries above a
    constant times this make the problem SETH-hard (logits are products of t + 1 entries)."""
    return math.log(n) ** (1.0 / (t + 1))
