"""The surrogate chain (method="poly"): the layer as tensor attention of width d², run low-rank.

The layer with general X (d×d²) and Y (d²×d) is tensor attention with feature and value width d²
(pair index (b, c) = b·d + c) at scale 1/d (derivation in docs/math/training_problem.rst)::

    Q' = A1 X,   K1'[j,(b,c)] = A2[j,b],   K2'[j,(b,c)] = A3[j,c],   V1', V2' likewise from A4, A5,
    O' = attention(Q', K1', K2', V1', V2', scale=1/d) = f (A4 ⊗ A5)          (n×d²)

so the layer output is O' Y, c = O' Y − E, dLoss/dY = O'^T c and dLoss/dX = A1^T dQ' for the
upstream dO' = c Y^T. O' and dQ' come from :func:`tattn_numba.attention_forward` /
:func:`tattn_numba.attention_backward` with ``method="poly"``; nothing of size n² or n×n² is
formed. Time O(n·r·d²) forward, O(n·r·d⁴) with dX, r = C(d² + g, g).
"""

from __future__ import annotations

import numpy as np

from ..attention import attention_backward, attention_forward
from ..poly.rounding import gamma
from ._common import Terms


def reduced_attention(A, X):
    """The tensor-attention operands of the layer: Q' = A1 X and K1', K2', V1', V2' (all n×d²).

    ``K1'[j, (b, c)] = A2[j, b]``, ``K2'[j, (b, c)] = A3[j, c]`` (likewise V1' from A4, V2' from
    A5) with pair (b, c) = b·d + c, so that s·⟨Q'_i, K1'_j1 ∘ K2'_j2⟩ = (A1 X (A2 ⊗ A3)^T)[i, (j1, j2)]·s
    and Σ P[i, j1, j2] V1'[j1] ∘ V2'[j2] = (f (A4 ⊗ A5))_i. Memory O(n·d²).
    """
    A1, A2, A3, A4, A5 = A
    d = A1.shape[1]
    return A1 @ X, np.repeat(A2, d, axis=1), np.tile(A3, (1, d)), np.repeat(A4, d, axis=1), np.tile(A5, (1, d))


def poly_forward(A, X, Y, *, tol, degree, family, memory_budget):
    """Surrogate O' (n×d², float64) and its AttentionState. ``tol`` bounds the layer output O'Y:
    the surrogate gets attention-output tolerance tol/‖Y‖₁ (‖Y‖₁ = largest column sum of |Y|),
    since |ΔO' Y| <= |ΔO'|·|Y| <= max|ΔO'|·‖Y‖₁ entrywise."""
    d = A[0].shape[1]
    Qp, K1p, K2p, V1p, V2p = reduced_attention(A, X)
    inner = tol
    if tol is not None:
        ynorm = float(np.abs(Y).sum(axis=0).max())
        if ynorm > 0.0:
            # keep max|ΔO'|·‖Y‖₁ plus the rounding of O'Y (γ_{d²}·max|O'|·‖Y‖₁) <= tol
            largest = float(np.abs(V1p).max() * np.abs(V2p).max())
            inner = (tol - float(gamma(d * d + 1)) * largest * ynorm) / ynorm * (1.0 - 1e-12)
            if not inner > 0.0:
                raise ValueError(
                    f"tol={tol!r} is unreachable: rounding the layer output O'Y alone may cost "
                    f"{float(gamma(d * d + 1)) * largest * ynorm:.3g}; use a larger tol"
                )
    try:
        Op, state = attention_forward(
            Qp, K1p, K2p, V1p, V2p, scale=1.0 / d, method="poly",
            tol=inner, degree=degree, family=family, memory_budget=memory_budget,
        )
    except ValueError as exc:
        if tol is None:
            raise
        raise ValueError(
            f"tol={tol!r} on the layer output O'Y (the reduced attention's output tolerance is "
            f"tol/‖Y‖₁ = {inner:.3g}) cannot be met: {exc}"
        ) from None
    return np.asarray(Op, dtype=np.float64), state


def poly_terms(
    A, E, X, Y, *, want_out: bool, want_dX: bool, want_dY: bool,
    tol=None, degree=None, family="chebyshev", memory_budget=None,
) -> Terms:
    """Driver of the surrogate (float64 in, float64 out).

    Õ' = poly attention(Q', K1', K2', V1', V2', scale=1/d); output Õ' Y; c̃ = Õ' Y − E;
    dY = Õ'^T c̃ (forward only); dX = A1^T dQ̃' with dQ̃' the surrogate gradient for dO' = c̃ Y^T.
    Time O(n·r·d²) forward, O(n·r·d⁴) with dX; r = C(d² + g, g).
    """
    Op, state = poly_forward(A, X, Y, tol=tol, degree=degree, family=family, memory_budget=memory_budget)
    out = Op @ Y
    c = out - E if E is not None else out
    total = 0.5 * float(np.sum(c * c))
    dY = Op.T @ c if want_dY else None
    dX = A[0].T @ np.asarray(attention_backward(state, c @ Y.T).dQ, dtype=np.float64) if want_dX else None
    return Terms(total, out if want_out else None, dX, dY)
