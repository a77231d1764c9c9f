"""Certificates of the surrogate chain: :func:`poly_certificate` and :func:`poly_weight_grad_bounds`.

The surrogate's own plan bounds |Õ' − O'| entrywise; these functions carry that bound (and the
rounding of their own float64 products) through the linear maps of the loss, output, dLoss/dX,
dLoss/dY and the weight gradients. The derivation is in docs/math/training_problem.rst
("Certified bounds of the surrogate") and docs/math/rounding.rst.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..attention import attention_backward
from ..poly.api import poly_gradient_bounds
from ..poly.plan import PolyPlan
from ..poly.rounding import UNIT_ROUNDOFF as _U
from ..poly.rounding import gamma
from ._common import WeightGrads, check_data, check_options, check_weights, check_XY
from ._surrogate import poly_forward
from ._weights import chain_rule


class PolyCertificate(NamedTuple):
    """The surrogate's values (method="poly") with certified bounds on their distance to the exact ones.

    All arrays are float64 (the bounds refer to these float64 values; casting them to float32
    adds that cast's rounding on top).

    Attributes
    ----------
    loss : float
        Surrogate loss ½‖c̃‖², c̃ = Õ' Y − E.
    output : ndarray, shape (n, d)
        Surrogate layer output Õ' Y.
    grad_X : ndarray, shape (d, d²)
        Surrogate dLoss/dX = A1^T dQ̃'.
    grad_Y : ndarray, shape (d², d)
        Surrogate dLoss/dY = Õ'^T c̃.
    loss_bound : float
        |loss − loss_exact| <= loss_bound.
    output_bound : ndarray, shape (n, d)
        |output − output_exact| <= output_bound entrywise.
    grad_X_bound : ndarray, shape (d, d²)
        |grad_X − grad_X_exact| <= grad_X_bound entrywise.
    grad_Y_bound : ndarray, shape (d², d)
        |grad_Y − grad_Y_exact| <= grad_Y_bound entrywise.
    plan : PolyPlan
        The underlying surrogate's plan for the reduced attention (feature width d², value
        width d²): degree, rank r = C(d² + g, g), per-row radii and κ, and its entrywise bound
        ``plan.output_bound`` (n, d²) on |Õ' − O'|.
    """

    loss: float
    output: np.ndarray
    grad_X: np.ndarray
    grad_Y: np.ndarray
    loss_bound: float
    output_bound: np.ndarray
    grad_X_bound: np.ndarray
    grad_Y_bound: np.ndarray
    plan: PolyPlan


def _pair_ranges(A4: np.ndarray, A5: np.ndarray) -> np.ndarray:
    """range_(b,c) = max − min over (j1, j2) of A4[j1, b]·A5[j2, c], flattened to (d²,) at b·d + c."""
    lo4, hi4 = A4.min(axis=0), A4.max(axis=0)
    lo5, hi5 = A5.min(axis=0), A5.max(axis=0)
    corners = np.stack([np.outer(lo4, lo5), np.outer(lo4, hi5), np.outer(hi4, lo5), np.outer(hi4, hi5)])
    return (corners.max(axis=0) - corners.min(axis=0)).reshape(-1)


def poly_certificate(
    A1, A2, A3, A4, A5, E, X, Y, *, tol: float | None = None, degree: int | None = None,
    family: str | None = None, memory_budget: int | None = None,
) -> PolyCertificate:
    """Surrogate loss, output, dLoss/dX, dLoss/dY (method="poly") with certified error bounds.

    One surrogate forward and backward on the reduced attention (feature and value width d²,
    scale 1/d), plus O(n·d³ + d⁵) work for the bounds; same options, errors and cost as
    ``grad_X(..., method="poly")``. Returns a :class:`PolyCertificate` (all float64).

    Parameters
    ----------
    A1, A2, A3, A4, A5, E, X, Y
        As for :func:`loss`.
    tol, degree, family, memory_budget
        The method="poly" options of :func:`loss` (exactly one of tol and degree).

    Notes
    -----
    With β = ``plan.output_bound`` the surrogate's certified entrywise bound on |Õ' − O'|
    (O' the reduced attention's output, n×d²), each bound covers, by the triangle inequality,
    computed from the surrogate's own quantities plus the float64 rounding of the products:

    * ``output_bound``: |ΔO'|·|Y| <= β|Y| (n×d); with ``tol``, its maximum is <= tol.
    * ``loss_bound``: loss − loss̃ = −⟨c̃, Δc⟩ + ½‖Δc‖², with Δc = ΔO' Y.
    * ``grad_Y_bound``: O'^T c = (Õ' − ΔO')^T (c̃ − Δc), expanded (d²×d).
    * ``grad_X_bound``: the surrogate's gradient bound (:func:`tattn_numba.poly_gradient_bounds`)
      at the upstream c̃Y^T, plus the exact gradient's response to the upstream error ΔcY^T,
      mapped through |A1|^T (d×d²).

    The derivation, term by term, is in the "Certified bounds of the surrogate" section of
    docs/math/training_problem.rst; the rounding terms in docs/math/rounding.rst. For the weight
    gradients see :func:`poly_weight_grad_bounds`.
    """
    options = check_options("poly", tol, degree, family, memory_budget)
    A, e, dtype, n, d = check_data(A1, A2, A3, A4, A5, E)
    x, y = check_XY(X, Y, dtype, d)
    Op, state = poly_forward(A, x, y, **options)
    out = Op @ y
    c = out - e
    upstream = c @ y.T
    dQ = np.asarray(attention_backward(state, upstream).dQ, dtype=np.float64)
    dX = A[0].T @ dQ
    dY = Op.T @ c
    # bounds
    plan = state.certificate
    beta = np.asarray(plan.output_bound, dtype=np.float64).reshape(n, d * d)
    absY, absc, absOp = np.abs(y), np.abs(c), np.abs(Op)
    slack = 1.0 + 1e-9  # the bounds' own arithmetic
    omega = slack * (beta @ absY + float(gamma(d * d)) * (absOp @ absY))  # output O'Y and its rounding
    omega_c = omega + _U * absc  # c̃ = fl(output − E)
    rho = min(float(np.linalg.norm(omega_c)), float(np.linalg.norm(beta)) * float(np.linalg.norm(y, 2))
              + float(np.linalg.norm(omega_c - beta @ absY)))
    first = min(float(np.sum(absc * omega_c)), float(np.linalg.norm(c)) * rho)
    loss_bound = slack * (first + 0.5 * rho * rho + float(gamma(n * d + 1)) * 0.5 * float(np.sum(c * c)))
    dY_bound = slack * (absOp.T @ omega_c + beta.T @ (absc + omega_c) + float(gamma(n)) * (absOp.T @ absc))
    b1 = np.asarray(poly_gradient_bounds(state, upstream).dQ, dtype=np.float64).reshape(n, d * d)
    upstream_error = omega_c @ absY.T + float(gamma(d)) * (absc @ absY.T)  # |c̃Y^T (computed) − cY^T|
    key_max = np.outer(np.abs(A[1]).max(axis=0), np.abs(A[2]).max(axis=0)).reshape(-1)
    b2 = (1.0 / d) * (upstream_error @ _pair_ranges(A[3], A[4]))[:, None] * key_max[None, :]
    dX_bound = slack * (np.abs(A[0]).T @ (b1 + b2) + float(gamma(n)) * (np.abs(A[0]).T @ np.abs(dQ)))
    return PolyCertificate(
        loss=0.5 * float(np.sum(c * c)), output=out, grad_X=dX, grad_Y=dY, loss_bound=float(loss_bound),
        output_bound=omega, grad_X_bound=dX_bound, grad_Y_bound=dY_bound, plan=plan,
    )


def poly_weight_grad_bounds(certificate: PolyCertificate, W_Q, W_K1, W_K2, W_V1, W_V2) -> WeightGrads:
    """Certified entrywise bounds on |weight_grads(method="poly") − weight_grads(method="exact")|.

    ``certificate`` must come from :func:`poly_certificate` at X = build_X(W_Q, W_K1, W_K2),
    Y = build_Y(W_V1, W_V2) (not checked). The weight gradients are linear in G = dLoss/dX and
    H = dLoss/dY (:func:`weight_grads`), e.g. ΔdW_Q = ΔG (W_K1 ⊘ W_K2), so with
    |ΔG| <= ``grad_X_bound`` and |ΔH| <= ``grad_Y_bound``:

        |ΔdW_Q|  <= bG (|W_K1| ⊘ |W_K2|),   |ΔdW_K1| <= bG_(1) (|W_Q| ⊘ |W_K2|),
        |ΔdW_K2| <= bG_(2) (|W_Q| ⊘ |W_K1|),
        |ΔdW_V1[b,m]| <= Σ_c bH[b,c,m]·|W_V2[c,m]|,   |ΔdW_V2[c,m]| <= Σ_b bH[b,c,m]·|W_V1[b,m]|.

    Returns a :class:`WeightGrads` of float64 (d, d) bounds. Time O(d⁴).
    """
    if not isinstance(certificate, PolyCertificate):
        raise TypeError(
            f"certificate must be a PolyCertificate from poly_certificate, got {type(certificate).__name__}"
        )
    d = certificate.grad_X_bound.shape[0]
    names = {"W_Q": W_Q, "W_K1": W_K1, "W_K2": W_K2, "W_V1": W_V1, "W_V2": W_V2}
    W, _ = check_weights(names, None, d)
    absW = [np.abs(np.asarray(w, dtype=np.float64)) for w in W]
    return WeightGrads(*chain_rule(certificate.grad_X_bound, certificate.grad_Y_bound, *absW))
