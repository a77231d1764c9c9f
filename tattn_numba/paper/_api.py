"""The public entry points of the loss side: validate, dispatch to the exact or surrogate chain, cast.

:func:`output`, :func:`loss`, :func:`grad_X`, :func:`grad_Y` and :func:`weight_grads` validate
their inputs (:mod:`._common`), run the driver of ``method`` (:mod:`._exact` or
:mod:`._surrogate`) once in float64, and return the requested terms in the input dtype.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import numpy as np

from ._common import (
    Terms,
    WeightGrads,
    check_data,
    check_method,
    check_options,
    check_weights,
    check_XY,
    khatri_rao_product,
)
from ._exact import exact_terms
from ._surrogate import poly_terms
from ._weights import chain_rule

_DRIVERS: dict[str, Callable[..., Terms]] = {"exact": exact_terms, "poly": poly_terms}


#: The Parameters section shared by :func:`loss`, :func:`grad_X` and :func:`grad_Y` (one call
#: signature): it stands for ``%(parameters)s`` in their docstrings, filled in by
#: :func:`_fill_loss_parameters` at the end of the module.
_LOSS_PARAMETERS = """
    Parameters
    ----------
    A1, A2, A3, A4, A5 : array_like, shape (n, d)
        float32 or float64 (one dtype for all arguments), finite, non-empty.
    E : array_like, shape (n, d)
        Target.
    X : array_like, shape (d, d²)
        Query–key parameter, e.g. :func:`build_X`.
    Y : array_like, shape (d², d)
        Value parameter, e.g. :func:`build_Y`.
    method : {"exact", "poly"}
        ``"exact"``: chunked dense computation, never forming n×n² matrices.
        ``"poly"``: the low-rank polynomial surrogate of SPEC §5 on the reduced tensor attention
        of the package notes (feature and value width d², scale 1/d); almost linear in n.
    tol : float, optional
        method="poly" only: target certified bound on max |output_poly − output_exact| of the
        layer output (n×d). The smallest certified degree is chosen for the underlying attention
        with output tolerance tol/‖Y‖₁ (‖Y‖₁ the largest column sum of |Y|). Exactly one of
        ``tol`` and ``degree``. The errors of the loss and of its gradients are then certified
        by :func:`poly_certificate`.
    degree : int, optional
        method="poly" only: a fixed polynomial degree g instead of ``tol``.
    family : {"chebyshev", "taylor"}, optional
        method="poly" only; None means "chebyshev".
    memory_budget : int, optional
        method="poly" only: bytes the surrogate may allocate (default
        ``config.MEMORY_BUDGET_BYTES``); a rank r = C(d² + g, g) needing more is refused.
    """.strip()


def _checked_driver(method, poly_options: tuple, A1, A2, A3, A4, A5, E):
    """Validate ``method``, its options and the data arrays; bind them to the driver of ``method``.

    Parameters
    ----------
    method, A1, A2, A3, A4, A5, E
        As for :func:`loss` (``E`` may be None: no target, no loss).
    poly_options : tuple
        ``(tol, degree, family, memory_budget)`` as given to the public function.

    Returns
    -------
    driver : callable
        ``driver(X, Y, *, want_out, want_dX, want_dY) -> Terms`` on float64 X (d, d²) and
        Y (d², d): one pass of :func:`._exact.exact_terms` or :func:`._surrogate.poly_terms`.
    dtype : numpy dtype
        The input dtype, that of the returned arrays.
    d : int
        The width of A1..A5.
    """
    method = check_method(method)
    options = check_options(method, *poly_options)
    A, e, dtype, _, d = check_data(A1, A2, A3, A4, A5, E)
    return partial(_DRIVERS[method], A, e, **options), dtype, d


def _run(
    method, poly_options: tuple, A1, A2, A3, A4, A5, E, X, Y, *, wanted: str | None = None,
) -> tuple[Terms, np.dtype]:
    """Validate everything, then run the driver of ``method`` once in float64.

    Arguments as for :func:`_checked_driver`, plus X (d, d²) and Y (d², d) checked in the input
    dtype; ``wanted`` names the array field of :class:`Terms` to compute besides the loss
    (``"out"``, ``"dX"`` or ``"dY"``; None: the loss alone). Returns ``(terms, dtype)``: the
    float64 terms and the input dtype.
    """
    driver, dtype, d = _checked_driver(method, poly_options, A1, A2, A3, A4, A5, E)
    x, y = check_XY(X, Y, dtype, d)
    terms = driver(x, y, want_out=wanted == "out", want_dX=wanted == "dX", want_dY=wanted == "dY")
    return terms, dtype


def _array_term(wanted: str, method, poly_options: tuple, A1, A2, A3, A4, A5, E, X, Y) -> np.ndarray:
    """The field ``wanted`` (``"out"``, ``"dX"`` or ``"dY"``) of :func:`_run`'s terms, in the input dtype."""
    terms, dtype = _run(method, poly_options, A1, A2, A3, A4, A5, E, X, Y, wanted=wanted)
    return getattr(terms, wanted).astype(dtype, copy=False)


def output(
    A1, A2, A3, A4, A5, X, Y, *, method: str = "exact",
    tol: float | None = None, degree: int | None = None, family: str | None = None,
    memory_budget: int | None = None,
) -> np.ndarray:
    """The layer output ``D^{-1} exp(A1 X (A2 ⊗ A3)^T / d) (A4 ⊗ A5) Y`` (the ``f h`` of SPEC §3).

    Parameters
    ----------
    A1, A2, A3, A4, A5 : array_like, shape (n, d)
        Inputs of the query, two keys and two values; float32 or float64, one dtype, finite.
    X : array_like, shape (d, d²)
    Y : array_like, shape (d², d)
    method : {"exact", "poly"}
    tol, degree, family, memory_budget
        Options of method="poly", see :func:`loss`.

    Returns
    -------
    ndarray, shape (n, d), input dtype
        With X = :func:`build_X` (W_Q, W_K1, W_K2) and Y = :func:`build_Y` (W_V1, W_V2) this equals
        ``tattn_numba.attention(A1@W_Q, A2@W_K1, A3@W_K2, A4@W_V1, A5@W_V2, scale=1/d)``.

    Notes
    -----
    Exact: time Θ(n³d + nd³), memory O(chunk·n² + nd + d³); see the package notes (:mod:`tattn_numba.paper`).
    Poly: O(n·r·d²), r = C(d² + g, g); entrywise error <= ``poly_certificate(...).output_bound``
    (<= tol when tol is given).
    """
    return _array_term("out", method, (tol, degree, family, memory_budget), A1, A2, A3, A4, A5, None, X, Y)


def loss(
    A1, A2, A3, A4, A5, E, X, Y, *, method: str = "exact",
    tol: float | None = None, degree: int | None = None, family: str | None = None,
    memory_budget: int | None = None,
) -> float:
    """The training loss of Liang–Shi–Song–Zhou (2024), SPEC §3.

    ``Loss = ½ ‖ D^{-1} exp(A1 X (A2 ⊗ A3)^T / d) (A4 ⊗ A5) Y − E ‖_F²`` with D the row sums,
    i.e. a softmax over the n² key pairs of each query row (computed stably: the row maximum
    is subtracted before exponentiating).

    %(parameters)s

    Returns
    -------
    float
        The loss, accumulated in float64.

    Raises
    ------
    TypeError
        Non-array input, dtype other than float32/float64, mixed dtypes, non-string method, a
        poly option (tol, degree, family, memory_budget) given with method="exact", a tol/degree
        of the wrong type.
    ValueError
        Wrong shapes (the message names the argument), empty arrays, NaN/Inf, unknown method,
        or a single row's n×n work tensors above ``config.MEMORY_BUDGET_BYTES``; for
        method="poly": neither or both of tol and degree, unknown family, non-positive tol,
        negative degree, a degree too low to certify positive weights, or a rank above the
        memory budget.

    Notes
    -----
    Exact: time Θ(n³d + nd³) (≈ 2n³d flops and n³ exponentials), memory O(chunk·n² + nd + d³).
    Poly: time O(n·r·d²), memory O(r·d⁴ + chunk·r + nd²), r = C(d² + g, g); certified
    |loss_poly − loss_exact| <= ``poly_certificate(...).loss_bound``.
    """
    terms, _ = _run(method, (tol, degree, family, memory_budget), A1, A2, A3, A4, A5, E, X, Y)
    return float(terms.loss)


def grad_X(
    A1, A2, A3, A4, A5, E, X, Y, *, method: str = "exact",
    tol: float | None = None, degree: int | None = None, family: str | None = None,
    memory_budget: int | None = None,
) -> np.ndarray:
    """Closed-form ``dLoss/dX = (1/d) A1^T p (A2 ⊗ A3)`` (Liang–Shi–Song–Zhou 2024; SPEC §3).

    With f the row softmax, h = (A4 ⊗ A5) Y, c = f h − E, q = c h^T, r_i = ⟨c_i, (f h)_i⟩ and
    p = f ∘ q − diag(r) f. The factor 1/d is included (the paper omits it, but it sits inside the
    loss, so the true gradient carries it).

    %(parameters)s

    Returns
    -------
    ndarray, shape (d, d²), input dtype
        ``G[a, pair(b, c)] = (1/d) Σ_{i,j1,j2} A1[i,a] p[i,(j1,j2)] A2[j1,b] A3[j2,c]``.

    Notes
    -----
    Computed per chunk of query rows with the two-sided products of identity I5 (SPEC §4):
    ``(p (A2 ⊗ A3))_i = vec(A2^T p_i A3)`` and ``q_i = A4 reshape(Y c_i) A5^T``; neither p, f
    (n×n²), h (n²×d) nor a Kronecker product is formed.
    Time Θ(n³d + nd³) (≈ 4n³d flops and n³ exponentials); memory O(chunk·n² + nd + d³), the
    chunk sized so that its n×n tensors take about 4 MiB (at least one row; a row that does
    not fit ``config.MEMORY_BUDGET_BYTES`` raises ``ValueError``).

    method="poly": dLoss/dX = A1^T dQ̃' with dQ̃' the surrogate attention gradient w.r.t. Q' = A1 X
    for the upstream dO' = c̃ Y^T (package notes); time O(n·r·d⁴), r = C(d² + g, g). Certified
    entrywise error bound: ``poly_certificate(...).grad_X_bound``.
    """
    return _array_term("dX", method, (tol, degree, family, memory_budget), A1, A2, A3, A4, A5, E, X, Y)


def grad_Y(
    A1, A2, A3, A4, A5, E, X, Y, *, method: str = "exact",
    tol: float | None = None, degree: int | None = None, family: str | None = None,
    memory_budget: int | None = None,
) -> np.ndarray:
    """Closed-form ``dLoss/dY = (A4 ⊗ A5)^T f^T c`` (Liang–Shi–Song–Zhou 2024; SPEC §3).

    %(parameters)s

    Returns
    -------
    ndarray, shape (d², d), input dtype
        ``dY[pair(b, c), m] = Σ_i vec(A4^T f_i A5)[pair(b, c)] · c[i, m]``.

    Notes
    -----
    Per chunk of query rows, ``W_i = A4^T f_i A5`` (d×d) gives both the output row
    ``(f h)_i = vec(W_i)^T Y`` and the contribution ``vec(W_i) c_i^T`` to dY (identity I5).
    Time Θ(n³d + nd³) (≈ 2n³d flops and n³ exponentials); memory O(chunk·n² + nd + d³).

    method="poly": dLoss/dY = Õ'^T c̃ from the surrogate forward alone, time O(n·r·d²); certified
    entrywise error bound: ``poly_certificate(...).grad_Y_bound``.
    """
    return _array_term("dY", method, (tol, degree, family, memory_budget), A1, A2, A3, A4, A5, E, X, Y)


def weight_grads(
    A1, A2, A3, A4, A5, E, W_Q, W_K1, W_K2, W_V1, W_V2, *, method: str = "exact",
    tol: float | None = None, degree: int | None = None, family: str | None = None,
    memory_budget: int | None = None,
) -> WeightGrads:
    """Gradients of ``loss(A…, E, build_X(W_Q, W_K1, W_K2), build_Y(W_V1, W_V2))`` w.r.t. the weights.

    Chain rule through X = W_Q (W_K1 ⊘ W_K2)^T and Y = W_V1 ⊘ W_V2 with G = dLoss/dX viewed as
    G[a, b, c] and H = dLoss/dY viewed as H[b, c, m]:

        dW_Q[a, l]  = Σ_{b,c} G[a,b,c] W_K1[b,l] W_K2[c,l]      = G (W_K1 ⊘ W_K2)
        dW_K1[b, l] = Σ_{a,c} G[a,b,c] W_Q[a,l]  W_K2[c,l]      = G_(1) (W_Q ⊘ W_K2)
        dW_K2[c, l] = Σ_{a,b} G[a,b,c] W_Q[a,l]  W_K1[b,l]      = G_(2) (W_Q ⊘ W_K1)
        dW_V1[b, m] = Σ_c H[b,c,m] W_V2[c,m],   dW_V2[c, m] = Σ_b H[b,c,m] W_V1[b,m]

    (G_(k) the mode-k unfolding). Equivalently, with Q = A1 W_Q etc. and dO = c, dW_Q = A1^T dQ,
    …, dW_V2 = A5^T dV2 where dQ..dV2 are the layer gradients of SPEC §2 at scale 1/d.

    Parameters
    ----------
    A1, A2, A3, A4, A5 : array_like, shape (n, d)
    E : array_like, shape (n, d)
    W_Q, W_K1, W_K2, W_V1, W_V2 : array_like, shape (d, d)
        float32 or float64 (one dtype for all arguments), finite.
    method : {"exact", "poly"}
    tol, degree, family, memory_budget
        Options of method="poly", see :func:`loss` (tol bounds the layer output at
        X = build_X(W_Q, W_K1, W_K2), Y = build_Y(W_V1, W_V2)).

    Returns
    -------
    WeightGrads
        ``(dW_Q, dW_K1, dW_K2, dW_V1, dW_V2)``, each (d, d) in the input dtype.

    Notes
    -----
    One pass computes both dLoss/dX and dLoss/dY: time Θ(n³d + nd³ + d⁴), memory
    O(chunk·n² + nd + d³). method="poly": time O(n·r·d⁴), r = C(d² + g, g); certified entrywise
    bounds: ``poly_weight_grad_bounds(poly_certificate(...), W_Q, W_K1, W_K2, W_V1, W_V2)``.
    """
    driver, dtype, d = _checked_driver(method, (tol, degree, family, memory_budget), A1, A2, A3, A4, A5, E)
    names = {"W_Q": W_Q, "W_K1": W_K1, "W_K2": W_K2, "W_V1": W_V1, "W_V2": W_V2}
    W, _ = check_weights(names, dtype, d)
    wq, wk1, wk2, wv1, wv2 = (np.asarray(w, dtype=np.float64) for w in W)
    X = wq @ khatri_rao_product(wk1, wk2).T
    Y = khatri_rao_product(wv1, wv2)
    terms = driver(X, Y, want_out=False, want_dX=True, want_dY=True)
    grads = chain_rule(terms.dX, terms.dY, wq, wk1, wk2, wv1, wv2)
    return WeightGrads(*(g.astype(dtype, copy=False) for g in grads))


def _fill_loss_parameters(*functions) -> None:
    """Put :data:`_LOSS_PARAMETERS` in place of ``%(parameters)s`` in the docstrings of ``functions``."""
    for function in functions:
        if function.__doc__ is not None:  # None under ``python -OO``
            function.__doc__ %= {"parameters": _LOSS_PARAMETERS}


_fill_loss_parameters(loss, grad_X, grad_Y)
