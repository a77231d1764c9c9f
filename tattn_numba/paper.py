"""The training problem of the tensor-attention theory paper and its closed-form gradient.

Liang, Shi, Song and Zhou (2024), "Tensor Attention Training: Provably Efficient Learning of
Higher-order Transformers", study one tensor-attention layer with weights

    Q = A1 W_Q,  K1 = A2 W_K1,  K2 = A3 W_K2,  V1 = A4 W_V1,  V2 = A5 W_V2,

A1..A5 ∈ R^{n×d}, W ∈ R^{d×d}. By the mixed-product rule (A2 ⊗ A3)(W_K1 ⊘ W_K2) = (A2 W_K1) ⊘ (A3 W_K2)
the layer depends on the weights only through

    X = W_Q (W_K1 ⊘ W_K2)^T ∈ R^{d×d²},     Y = W_V1 ⊘ W_V2 ∈ R^{d²×d}

(``⊘`` is the column-wise Khatri–Rao product; pair index ``pair(b, c) = b·d + c``), and the loss is

    Loss(X, Y) = ½ ‖ D^{-1} exp(A1 X (A2 ⊗ A3)^T / d) (A4 ⊗ A5) Y − E ‖_F²,

D the diagonal of row sums (a softmax over the n² key pairs of each query row). SPEC §3 gives

    f = D^{-1} A,  h = (A4 ⊗ A5) Y,  c = f h − E,  q = c h^T,  r_i = ⟨c_i, (f h)_i⟩,  p = f ∘ q − diag(r) f
    dLoss/dX = (1/d) A1^T p (A2 ⊗ A3),      dLoss/dY = (A4 ⊗ A5)^T f^T c.

How the exact method avoids the n×n² matrices
---------------------------------------------
Reshape row i of an n×n² matrix into an n×n matrix (rows j1, columns j2, matching
``pair(j1, j2) = j1·n + j2``). Every Kronecker product then becomes a two-sided ("sandwich")
product, the general form of identity I5 of SPEC §4:

    (M (A2 ⊗ A3)^T)_i   = A2 M_i A3^T          (M_i the d×d reshape of row i of M ∈ R^{n×d²})
    (G (A2 ⊗ A3))_i     = A2^T G_i A3          (G_i the n×n reshape of row i of G ∈ R^{n×n²})

So, for a chunk of query rows, with T_i = (A1 X)_i reshaped d×d:

    logits_i = A2 T_i A3^T / d                (the mode product T ×_1 A2 ×_2 A3 of the chunk)
    W_i      = A4^T f_i A5  (d×d)             (f h)_i = vec(W_i)^T Y        → c_i
    q_i      = A4 Z_i A5^T, Z_i = reshape(Y c_i) (d×d)                      (= Σ_m c[i,m] h_m)
    dX      += (1/d) A1_chunk^T [vec(A2^T p_i A3)]_i
    dY      += [vec(W_i)]_i^T c_chunk

Neither h (n²×d) nor f (n×n²) nor any Kronecker product is ever formed; only the chunk's
(rows × n × n) logit tensor and one more tensor of that size are alive at a time.

Complexity (method="exact")
---------------------------
Time Θ(n³·d + n·d³) for each of :func:`loss` (≈ 2 n³ d flops), :func:`grad_Y` (≈ 2 n³ d) and
:func:`grad_X` (≈ 4 n³ d) plus n³ exponentials. Extra memory O(chunk·n² + n·d + d³) with the chunk
chosen so that its n×n work tensors take about ``_CHUNK_BYTES`` (4 MiB, one core's L2 here); a
single row's tensors must fit in ``tattn_numba.config.MEMORY_BUDGET_BYTES`` or a ``ValueError`` is
raised before allocating. The work is NumPy/BLAS matmuls and ufuncs (memory-bound elementwise
passes dominate for small d); measured here (2 cores) n = 400, d = 16: loss ≈ 0.18 s,
grad_X ≈ 0.35 s.
All arithmetic is float64; results are returned in the input dtype.

The polynomial surrogate (method="poly")
----------------------------------------
The layer with general X (d×d²) and Y (d²×d) *is* tensor attention with feature width D = d² and
value width d² (pair index (b, c) = b·d + c, as in X's columns), at scale 1/d (the d of the A's)::

    Q' = A1 X (n×d²),     K1'[j1,(b,c)] = A2[j1,b],   K2'[j2,(b,c)] = A3[j2,c],
                          V1'[j1,(b,c)] = A4[j1,b],   V2'[j2,(b,c)] = A5[j2,c],
    O' = attention(Q', K1', K2', V1', V2', scale=1/d) = f (A4 ⊗ A5)          (n×d²)

since s·⟨Q'_i, K1'_j1 ∘ K2'_j2⟩ = (A1 X (A2 ⊗ A3)^T)[i,(j1,j2)] / d. Then the layer output is O' Y,
c = O' Y − E, Loss = ½‖c‖², dLoss/dY = O'^T c, and dLoss/dX = A1^T dQ' with dQ' the attention
gradient w.r.t. Q' for the upstream dO' = c Y^T (this is SPEC §3's (1/d) A1^T p (A2⊗A3) and
(A4⊗A5)^T f^T c). ``method="poly"`` evaluates O' and dQ' with the low-rank surrogate of SPEC §5
(:func:`tattn_numba.attention_forward` / :func:`tattn_numba.attention_backward`, ``method="poly"``);
nothing of size n² or n×n² is formed.

Complexity (method="poly"): with g the polynomial degree and r = C(d² + g, g) the surrogate's rank,
forward (:func:`output`, :func:`loss`, :func:`grad_Y`) O(n·r·d²), gradient (:func:`grad_X`,
:func:`weight_grads`) O(n·r·d⁴) time; memory O(r·d⁴ + chunk·r + n·d²) (the r×(1 + 2d² + d⁴)
summaries dominate). Almost linear in n, but r grows like d^{2g}/g!, so it is meant for small d
(the theory's d = O(log n) with bounded entries); the surrogate refuses, with a ``ValueError``,
a rank whose memory passes ``memory_budget`` (default ``config.MEMORY_BUDGET_BYTES``).

Options of method="poly" (keyword-only; all must be left ``None`` for method="exact"):
exactly one of ``tol`` (target certified bound on max |output_poly − output_exact| of the layer
output O' Y, n×d; the surrogate is run with attention-output tolerance tol/‖Y‖₁, ‖Y‖₁ the largest
column sum of |Y|) and ``degree`` (a fixed polynomial degree g); ``family`` ("chebyshev", the
default when None, or "taylor"); ``memory_budget`` (bytes). :func:`poly_certificate` returns the
surrogate's values together with certified bounds on their distance to the exact ones (loss,
output, dLoss/dX, dLoss/dY; :func:`poly_weight_grad_bounds` maps them to the weight gradients).
"""

from __future__ import annotations

import numbers
from typing import Callable, NamedTuple

import numpy as np
import tensorly as tl
from tensorly.tenalg import khatri_rao

from . import config
from ._validation import as_float_array, check_memory
from .attention import attention_backward, attention_forward
from .poly.api import poly_gradient_bounds
from .poly.exp_approx import FAMILIES
from .poly.plan import PolyPlan
from .poly.rounding import UNIT_ROUNDOFF as _U
from .poly.rounding import gamma

__all__ = [
    "WeightGrads", "PolyCertificate", "build_X", "build_Y", "output", "loss", "grad_X", "grad_Y", "weight_grads",
    "poly_certificate", "poly_weight_grad_bounds",
]

#: Target size in bytes of one chunk's n×n work tensors (all of them together). Tests patch it.
_CHUNK_BYTES = 4 * 2**20
#: Number of (rows × n × n) float64 tensors alive at once inside a chunk (logits/f, q/p and the
#: temporaries of the two-sided products), used to size chunks and to check the memory budget.
_LIVE_NN_TENSORS = 3

_METHODS = ("exact", "poly")


class WeightGrads(NamedTuple):
    """Gradients of the paper's loss with respect to the five d×d weight matrices.

    Each field has shape (d, d) and the dtype of the inputs.
    """

    dW_Q: np.ndarray
    dW_K1: np.ndarray
    dW_K2: np.ndarray
    dW_V1: np.ndarray
    dW_V2: np.ndarray


class _Terms(NamedTuple):
    loss: float
    out: np.ndarray | None
    dX: np.ndarray | None
    dY: np.ndarray | None


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


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------


def _check_method(method) -> str:
    if not isinstance(method, str):
        raise TypeError(f"method must be a string, got {type(method).__name__}")
    if method not in _METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {list(_METHODS)}")
    return method


def _check_options(method: str, tol, degree, family, memory_budget) -> dict:
    """Validate the options of ``method``; return the keyword options of its driver.

    method="exact" takes none (every option must be None, else ``TypeError`` naming it);
    method="poly" needs exactly one of ``tol`` and ``degree`` (``ValueError`` otherwise), a known
    ``family`` (None means "chebyshev"); ``memory_budget`` is checked by the surrogate.
    """
    given = {"tol": tol, "degree": degree, "family": family, "memory_budget": memory_budget}
    if method != "poly":
        extra = [name for name, value in given.items() if value is not None]
        if extra:
            raise TypeError(
                f"option(s) {', '.join(extra)} apply only to method='poly'; method={method!r} takes none "
                "(leave them None)"
            )
        return {}
    if tol is None and degree is None:
        raise ValueError(
            "method='poly' needs exactly one of tol (target bound on the layer-output error) or degree "
            "(polynomial degree); got neither"
        )
    if tol is not None and degree is not None:
        raise ValueError("method='poly' takes exactly one of tol or degree; got both tol and degree")
    if tol is not None:
        if isinstance(tol, (bool, np.bool_)) or not isinstance(tol, numbers.Real):
            raise TypeError(f"tol must be a positive real number, got {type(tol).__name__}")
        tol = float(tol)
        if not np.isfinite(tol) or tol <= 0.0:
            raise ValueError(f"tol must be positive and finite, got {tol!r}")
    if degree is not None:
        if isinstance(degree, (bool, np.bool_)) or not isinstance(degree, numbers.Integral):
            raise TypeError(f"degree must be a non-negative integer, got {type(degree).__name__}")
        degree = int(degree)
        if degree < 0:
            raise ValueError(f"degree must be >= 0, got {degree}")
    if family is None:
        family = "chebyshev"
    if not isinstance(family, str):
        raise TypeError(f"family must be a string, one of {list(FAMILIES)}, got {type(family).__name__}")
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {list(FAMILIES)}")
    return {"tol": tol, "degree": degree, "family": family, "memory_budget": memory_budget}


def _check_matrix(x, name: str, dtype, shape: tuple[int, int] | None, what: str) -> np.ndarray:
    arr = as_float_array(x, name, dtype=dtype)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array of shape {what}, got shape {arr.shape}")
    if shape is not None and arr.shape != shape:
        raise ValueError(f"{name} must have shape {what} = {shape}, got {arr.shape}")
    return arr


def _check_data(A1, A2, A3, A4, A5, E):
    """Validate A1..A5 (n, d) and E (n, d) (E may be None); return float64 copies and the dtype."""
    a1 = _check_matrix(A1, "A1", None, None, "(n, d)")
    dtype = a1.dtype
    n, d = a1.shape
    arrays = [a1]
    for name, x in (("A2", A2), ("A3", A3), ("A4", A4), ("A5", A5)):
        arrays.append(_check_matrix(x, name, dtype, (n, d), "(n, d) like A1"))
    e = None if E is None else _check_matrix(E, "E", dtype, (n, d), "(n, d) like A1")
    as64 = [np.ascontiguousarray(a, dtype=np.float64) for a in arrays]
    e64 = None if e is None else np.ascontiguousarray(e, dtype=np.float64)
    return as64, e64, dtype, n, d


def _check_XY(X, Y, dtype, d: int):
    x = _check_matrix(X, "X", dtype, (d, d * d), "(d, d²)")
    y = _check_matrix(Y, "Y", dtype, (d * d, d), "(d², d)")
    return np.ascontiguousarray(x, dtype=np.float64), np.ascontiguousarray(y, dtype=np.float64)


def _check_weights(weights: dict, dtype, d: int | None):
    out = []
    for name, w in weights.items():
        arr = _check_matrix(w, name, dtype, None if d is None else (d, d), "(d, d)")
        if arr.shape[0] != arr.shape[1]:
            raise ValueError(f"{name} must be square (d, d), got shape {arr.shape}")
        if d is None:
            d = arr.shape[0]
        if dtype is None:
            dtype = arr.dtype
        out.append(arr)
    return out, dtype


def _check_chunk_rows(chunk_rows) -> int | None:
    if chunk_rows is None:
        return None
    if isinstance(chunk_rows, (bool, np.bool_)) or not isinstance(chunk_rows, (int, np.integer)) or chunk_rows < 1:
        raise ValueError(f"_chunk_rows must be a positive integer or None, got {chunk_rows!r}")
    return int(chunk_rows)


# --------------------------------------------------------------------------------------------
# tensor algebra helpers (all float64, NumPy matmul for the hot contractions)
# --------------------------------------------------------------------------------------------


def _khatri_rao(U: np.ndarray, V: np.ndarray) -> np.ndarray:
    """Column-wise Khatri–Rao product ``U ⊘ V`` (row ``pair(a, b) = a·rows(V) + b``)."""
    with tl.backend_context("numpy"):
        return np.asarray(khatri_rao([U, V]))


def _sandwich(B: np.ndarray, T: np.ndarray, C: np.ndarray) -> np.ndarray:
    """Batched ``B @ T[i] @ C^T``: T (k, d, d) → (k, n, n); the mode product T ×_1 B ×_2 C.

    Equals ``tensorly.tenalg.multi_mode_dot(T, [B, C], modes=[1, 2])``; cost 2·k·(n²d + nd²).
    """
    return np.matmul(B, np.matmul(T, C.T))


def _reduce(B: np.ndarray, F: np.ndarray, C: np.ndarray) -> np.ndarray:
    """Batched ``B^T @ F[i] @ C``: F (k, n, n) → (k, d, d); the mode product F ×_1 B^T ×_2 C^T.

    ``k, n = F.shape[:2]``; F @ C is one (k·n × n)·(n × d) GEMM. Cost 2·k·(n²d + nd²).
    """
    k, n, _ = F.shape
    FC = (F.reshape(k * n, n) @ C).reshape(k, n, -1)
    return np.matmul(B.T, FC)


def _chunk_size(n: int, d: int, chunk_rows: int | None) -> int:
    per_row = _LIVE_NN_TENSORS * n * n * 8 + 4 * d * (d + n) * 8
    check_memory(per_row, f"one query row of the exact paper loss (n={n}, d={d})", config.MEMORY_BUDGET_BYTES)
    most = max(1, config.MEMORY_BUDGET_BYTES // per_row)  # never above the hard budget
    if chunk_rows is not None:
        return int(min(chunk_rows, n, most))
    return int(max(1, min(n, most, _CHUNK_BYTES // per_row)))


def _exact_terms(
    A, E, X, Y, *, want_out: bool, want_dX: bool, want_dY: bool, chunk_rows: int | None = None
) -> _Terms:
    """Driver of the exact method: one pass over query-row chunks (float64 in, float64 out).

    ``A`` is the list [A1..A5] of (n, d) arrays; ``E`` (n, d) or None (then the loss is not
    computed and c = f h). Returns the loss, the output f h (n, d), dLoss/dX (d, d²) and
    dLoss/dY (d², d) as requested. Memory O(chunk·(n² + d²) + n·d + d³); time Θ(n³d + nd³).
    """
    A1, A2, A3, A4, A5 = A
    n, d = A1.shape
    inv_d = 1.0 / d
    rows = _chunk_size(n, d, chunk_rows)
    total = 0.0
    out = np.empty((n, d)) if want_out else None
    dX = np.zeros((d, d * d)) if want_dX else None
    dY = np.zeros((d * d, d)) if want_dY else None
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        k = stop - start
        # logits L[i, j1, j2] = (1/d) Σ_{b,c} T[i,b,c] A2[j1,b] A3[j2,c], T_i = reshape((A1 X)_i)
        T = (A1[start:stop] @ X) * inv_d
        e = _sandwich(A2, T.reshape(k, d, d), A3)
        # stable row softmax over the n² pairs, normalisation deferred: f_i = e_i / s_i
        e -= e.max(axis=(1, 2), keepdims=True)
        np.exp(e, out=e)
        inv_s = 1.0 / e.sum(axis=(1, 2))
        # W_i = A4^T f_i A5, so (f h)_i = vec(W_i)^T Y
        Wf = _reduce(A4, e, A5).reshape(k, d * d)
        Wf *= inv_s[:, None]
        fh = Wf @ Y
        if want_out:
            out[start:stop] = fh
        c = fh - E[start:stop] if E is not None else fh
        total += 0.5 * float(np.sum(c * c))
        if want_dY:
            dY += Wf.T @ c
        if want_dX:
            r = np.einsum("im,im->i", c, fh)
            # q_i = Σ_m c[i,m] h_m = A4 Z_i A5^T with Z_i = reshape(Y c_i)
            q = _sandwich(A4, (c @ Y.T).reshape(k, d, d), A5)
            q -= r[:, None, None]
            q *= e  # p_i = s_i · f_i ∘ (q_i − r_i)
            del e
            M = _reduce(A2, q, A3).reshape(k, d * d)  # s_i · A2^T p_i A3
            del q
            M *= inv_s[:, None]
            dX += A1[start:stop].T @ M
    if want_dX:
        dX *= inv_d
    return _Terms(total, out, dX, dY)


def _reduced_attention(A, X):
    """The tensor-attention operands of the layer: Q' = A1 X and K1', K2', V1', V2' (all n×d²).

    ``K1'[j, (b, c)] = A2[j, b]``, ``K2'[j, (b, c)] = A3[j, c]`` (likewise V1' from A4, V2' from
    A5) with pair (b, c) = b·d + c, so that s·⟨Q'_i, K1'_j1 ∘ K2'_j2⟩ = (A1 X (A2 ⊗ A3)^T)[i, (j1, j2)]·s
    and Σ P[i, j1, j2] V1'[j1] ∘ V2'[j2] = (f (A4 ⊗ A5))_i. Memory O(n·d²).
    """
    A1, A2, A3, A4, A5 = A
    d = A1.shape[1]
    return A1 @ X, np.repeat(A2, d, axis=1), np.tile(A3, (1, d)), np.repeat(A4, d, axis=1), np.tile(A5, (1, d))


def _poly_forward(A, X, Y, *, tol, degree, family, memory_budget):
    """Surrogate O' (n×d², float64) and its AttentionState. ``tol`` bounds the layer output O'Y:
    the surrogate gets attention-output tolerance tol/‖Y‖₁ (‖Y‖₁ = largest column sum of |Y|),
    since |ΔO' Y| <= |ΔO'|·|Y| <= max|ΔO'|·‖Y‖₁ entrywise."""
    d = A[0].shape[1]
    Qp, K1p, K2p, V1p, V2p = _reduced_attention(A, X)
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


def _poly_terms(
    A, E, X, Y, *, want_out: bool, want_dX: bool, want_dY: bool, chunk_rows: int | None = None,
    tol=None, degree=None, family="chebyshev", memory_budget=None,
) -> _Terms:
    """Driver of the surrogate (``chunk_rows`` is the exact method's knob and is ignored here).

    Õ' = poly attention(Q', K1', K2', V1', V2', scale=1/d); output Õ' Y; c̃ = Õ' Y − E;
    dY = Õ'^T c̃ (forward only); dX = A1^T dQ̃' with dQ̃' the surrogate gradient for dO' = c̃ Y^T.
    Time O(n·r·d²) forward, O(n·r·d⁴) with dX; r = C(d² + g, g).
    """
    Op, state = _poly_forward(A, X, Y, tol=tol, degree=degree, family=family, memory_budget=memory_budget)
    out = Op @ Y
    c = out - E if E is not None else out
    total = 0.5 * float(np.sum(c * c))
    dY = Op.T @ c if want_dY else None
    dX = A[0].T @ np.asarray(attention_backward(state, c @ Y.T).dQ, dtype=np.float64) if want_dX else None
    return _Terms(total, out if want_out else None, dX, dY)


_DRIVERS: dict[str, Callable[..., _Terms]] = {"exact": _exact_terms, "poly": _poly_terms}


def _run(
    method, A1, A2, A3, A4, A5, E, X, Y, *, want_out=False, want_dX=False, want_dY=False, chunk_rows=None,
    tol=None, degree=None, family=None, memory_budget=None,
):
    method = _check_method(method)
    options = _check_options(method, tol, degree, family, memory_budget)
    chunk_rows = _check_chunk_rows(chunk_rows)
    A, e, dtype, n, d = _check_data(A1, A2, A3, A4, A5, E)
    x, y = _check_XY(X, Y, dtype, d)
    terms = _DRIVERS[method](
        A, e, x, y, want_out=want_out, want_dX=want_dX, want_dY=want_dY, chunk_rows=chunk_rows, **options
    )
    return terms, dtype


def _chain_rule(dX, dY, wq, wk1, wk2, wv1, wv2):
    """Weight gradients from G = dLoss/dX (d, d²) and H = dLoss/dY (d², d) (see :func:`weight_grads`).

    Linear in (G, H) with coefficients from the weights, so with G, H replaced by entrywise
    error bounds and the weights by their absolute values it returns entrywise error bounds.
    """
    d = wq.shape[0]
    G = dX.reshape(d, d, d)  # G[a, b, c]
    H = dY.reshape(d, d, d)  # H[b, c, m]
    dWQ = dX @ _khatri_rao(wk1, wk2)
    dWK1 = G.transpose(1, 0, 2).reshape(d, d * d) @ _khatri_rao(wq, wk2)
    dWK2 = G.transpose(2, 0, 1).reshape(d, d * d) @ _khatri_rao(wq, wk1)
    dWV1 = np.einsum("bcm,cm->bm", H, wv2)
    dWV2 = np.einsum("bcm,bm->cm", H, wv1)
    return dWQ, dWK1, dWK2, dWV1, dWV2


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------


def build_X(W_Q, W_K1, W_K2) -> np.ndarray:
    """The query–key parameter ``X = W_Q (W_K1 ⊘ W_K2)^T`` of Liang–Shi–Song–Zhou (2024).

    Parameters
    ----------
    W_Q, W_K1, W_K2 : array_like, shape (d, d)
        float32 or float64 (one dtype for all), finite.

    Returns
    -------
    X : ndarray, shape (d, d²), input dtype
        ``X[a, pair(b, c)] = Σ_l W_Q[a, l] W_K1[b, l] W_K2[c, l]`` with ``pair(b, c) = b·d + c``.

    Raises
    ------
    TypeError
        Non-array, non-float or mixed dtypes.
    ValueError
        Non-square or mismatched shapes, empty arrays, NaN/Inf.

    Notes
    -----
    ``⊘`` is ``tensorly.tenalg.khatri_rao``. Time O(d⁴), memory O(d³). With it,
    ``A1 X (A2 ⊗ A3)^T = Q (K1 ⊘ K2)^T`` for Q = A1 W_Q, K1 = A2 W_K1, K2 = A3 W_K2 (SPEC §3).
    """
    (wq, wk1, wk2), dtype = _check_weights({"W_Q": W_Q, "W_K1": W_K1, "W_K2": W_K2}, None, None)
    X = wq.astype(np.float64) @ _khatri_rao(wk1.astype(np.float64), wk2.astype(np.float64)).T
    return X.astype(dtype, copy=False)


def build_Y(W_V1, W_V2) -> np.ndarray:
    """The value parameter ``Y = W_V1 ⊘ W_V2`` of Liang–Shi–Song–Zhou (2024).

    Parameters
    ----------
    W_V1, W_V2 : array_like, shape (d, d)
        float32 or float64 (one dtype for both), finite.

    Returns
    -------
    Y : ndarray, shape (d², d), input dtype
        ``Y[pair(b, c), m] = W_V1[b, m] W_V2[c, m]`` with ``pair(b, c) = b·d + c``.

    Raises
    ------
    TypeError, ValueError
        As for :func:`build_X`.

    Notes
    -----
    Time and memory O(d³). ``(A4 ⊗ A5) Y = (A4 W_V1) ⊘ (A5 W_V2) = V1 ⊘ V2`` (SPEC §4, I2).
    """
    (wv1, wv2), dtype = _check_weights({"W_V1": W_V1, "W_V2": W_V2}, None, None)
    return _khatri_rao(wv1.astype(np.float64), wv2.astype(np.float64)).astype(dtype, copy=False)


def output(
    A1, A2, A3, A4, A5, X, Y, *, method: str = "exact",
    tol: float | None = None, degree: int | None = None, family: str | None = None,
    memory_budget: int | None = None, _chunk_rows: int | None = None,
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
    Exact: time Θ(n³d + nd³), memory O(chunk·n² + nd + d³); see the module notes.
    Poly: O(n·r·d²), r = C(d² + g, g); entrywise error <= ``poly_certificate(...).output_bound``
    (<= tol when tol is given).
    """
    terms, dtype = _run(
        method, A1, A2, A3, A4, A5, None, X, Y, want_out=True, chunk_rows=_chunk_rows,
        tol=tol, degree=degree, family=family, memory_budget=memory_budget,
    )
    return terms.out.astype(dtype, copy=False)


def loss(
    A1, A2, A3, A4, A5, E, X, Y, *, method: str = "exact",
    tol: float | None = None, degree: int | None = None, family: str | None = None,
    memory_budget: int | None = None, _chunk_rows: int | None = None,
) -> float:
    """The training loss of Liang–Shi–Song–Zhou (2024), SPEC §3.

    ``Loss = ½ ‖ D^{-1} exp(A1 X (A2 ⊗ A3)^T / d) (A4 ⊗ A5) Y − E ‖_F²`` with D the row sums,
    i.e. a softmax over the n² key pairs of each query row (computed stably: the row maximum
    is subtracted before exponentiating).

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
        of the module notes (feature and value width d², scale 1/d); almost linear in n.
    tol : float, optional
        method="poly" only: target certified bound on max |output_poly − output_exact| of the
        layer output (n×d). The smallest certified degree is chosen for the underlying attention
        with output tolerance tol/‖Y‖₁ (‖Y‖₁ the largest column sum of |Y|). Exactly one of
        ``tol`` and ``degree``. The loss error is then certified by :func:`poly_certificate`.
    degree : int, optional
        method="poly" only: a fixed polynomial degree g instead of ``tol``.
    family : {"chebyshev", "taylor"}, optional
        method="poly" only; None means "chebyshev".
    memory_budget : int, optional
        method="poly" only: bytes the surrogate may allocate (default
        ``config.MEMORY_BUDGET_BYTES``); a rank r = C(d² + g, g) needing more is refused.

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
    terms, _ = _run(
        method, A1, A2, A3, A4, A5, E, X, Y, chunk_rows=_chunk_rows,
        tol=tol, degree=degree, family=family, memory_budget=memory_budget,
    )
    return float(terms.loss)


def grad_X(
    A1, A2, A3, A4, A5, E, X, Y, *, method: str = "exact",
    tol: float | None = None, degree: int | None = None, family: str | None = None,
    memory_budget: int | None = None, _chunk_rows: int | None = None,
) -> np.ndarray:
    """Closed-form ``dLoss/dX = (1/d) A1^T p (A2 ⊗ A3)`` (Liang–Shi–Song–Zhou 2024; SPEC §3).

    With f the row softmax, h = (A4 ⊗ A5) Y, c = f h − E, q = c h^T, r_i = ⟨c_i, (f h)_i⟩ and
    p = f ∘ q − diag(r) f. The factor 1/d is included (the paper omits it, but it sits inside the
    loss, so the true gradient carries it).

    Parameters
    ----------
    A1, A2, A3, A4, A5, E, X, Y, method, tol, degree, family, memory_budget
        As for :func:`loss`.

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
    for the upstream dO' = c̃ Y^T (module notes); time O(n·r·d⁴), r = C(d² + g, g). Certified
    entrywise error bound: ``poly_certificate(...).grad_X_bound``.
    """
    terms, dtype = _run(
        method, A1, A2, A3, A4, A5, E, X, Y, want_dX=True, chunk_rows=_chunk_rows,
        tol=tol, degree=degree, family=family, memory_budget=memory_budget,
    )
    return terms.dX.astype(dtype, copy=False)


def grad_Y(
    A1, A2, A3, A4, A5, E, X, Y, *, method: str = "exact",
    tol: float | None = None, degree: int | None = None, family: str | None = None,
    memory_budget: int | None = None, _chunk_rows: int | None = None,
) -> np.ndarray:
    """Closed-form ``dLoss/dY = (A4 ⊗ A5)^T f^T c`` (Liang–Shi–Song–Zhou 2024; SPEC §3).

    Parameters
    ----------
    A1, A2, A3, A4, A5, E, X, Y, method, tol, degree, family, memory_budget
        As for :func:`loss`.

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
    terms, dtype = _run(
        method, A1, A2, A3, A4, A5, E, X, Y, want_dY=True, chunk_rows=_chunk_rows,
        tol=tol, degree=degree, family=family, memory_budget=memory_budget,
    )
    return terms.dY.astype(dtype, copy=False)


def weight_grads(
    A1, A2, A3, A4, A5, E, W_Q, W_K1, W_K2, W_V1, W_V2, *, method: str = "exact",
    tol: float | None = None, degree: int | None = None, family: str | None = None,
    memory_budget: int | None = None, _chunk_rows: int | None = None,
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
    method = _check_method(method)
    options = _check_options(method, tol, degree, family, memory_budget)
    chunk_rows = _check_chunk_rows(chunk_rows=_chunk_rows)
    A, e, dtype, n, d = _check_data(A1, A2, A3, A4, A5, E)
    names = {"W_Q": W_Q, "W_K1": W_K1, "W_K2": W_K2, "W_V1": W_V1, "W_V2": W_V2}
    W, _ = _check_weights(names, dtype, d)
    wq, wk1, wk2, wv1, wv2 = (np.asarray(w, dtype=np.float64) for w in W)
    X = wq @ _khatri_rao(wk1, wk2).T
    Y = _khatri_rao(wv1, wv2)
    terms = _DRIVERS[method](
        A, e, X, Y, want_out=False, want_dX=True, want_dY=True, chunk_rows=chunk_rows, **options
    )
    grads = _chain_rule(terms.dX, terms.dY, wq, wk1, wk2, wv1, wv2)
    return WeightGrads(*(g.astype(dtype, copy=False) for g in grads))


# --------------------------------------------------------------------------------------------
# certificates of the surrogate
# --------------------------------------------------------------------------------------------


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

    One surrogate forward and backward on the reduced attention of the module notes, plus
    O(n·d³ + d⁵) work for the bounds; same options, errors and cost as ``grad_X(...,
    method="poly")``. Returns a :class:`PolyCertificate` (all float64).

    Parameters
    ----------
    A1, A2, A3, A4, A5, E, X, Y
        As for :func:`loss`.
    tol, degree, family, memory_budget
        The method="poly" options of :func:`loss` (exactly one of tol and degree).

    Notes
    -----
    Notation: O' the exact attention output (n×d²), Õ' the surrogate's, ΔO' = Õ' − O'; c = O'Y − E,
    c̃ = Õ'Y − E, Δc = c̃ − c = ΔO' Y; |·| entrywise. The surrogate's plan certifies
    |ΔO'| <= β := ``plan.output_bound`` entrywise (SPEC §5: |P̃ − P| <= κ_i P, and rows of P̃ − P
    sum to zero, so |ΔO'[i,k]| <= κ_i·range_k/2). Everything below follows by the triangle
    inequality and is computed from the surrogate's own quantities (Õ', c̃), not the unknown exact
    ones. The float64 rounding of the products below is included (γ_k·|A|·|B| for a k-term
    product, u per subtraction); ω', c̃ etc. denote those rounded-up terms in the code.

    * output:  |Δ(O'Y)| = |ΔO' Y| <= β |Y| =: ω   (n×d).  With ``tol``, max ω <= tol.
    * loss:    loss − loss̃ = −⟨c̃, Δc⟩ + ½‖Δc‖², so
               |Δloss| <= min(Σ |c̃| ∘ ω, ‖c̃‖_F·ρ) + ½ρ²,
               ρ = min(‖ω‖_F, ‖β‖_F·‖Y‖₂) >= ‖Δc‖_F.
    * dY:      O'^T c = (Õ' − ΔO')^T (c̃ − Δc), so
               |ΔdY| <= |Õ'|^T ω + β^T |c̃| + β^T ω          (d²×d).
    * dX:      dX̃ − dX = A1^T (dQ̃'(c̃Y^T) − dQ'(cY^T)) where dQ̃'(u), dQ'(u) are the surrogate and
               exact attention gradients w.r.t. Q' for upstream u. Split
               dQ̃'(c̃Y^T) − dQ'(cY^T) = [dQ̃'(c̃Y^T) − dQ'(c̃Y^T)] + dQ'(Δc Y^T)
               (the exact gradient is linear in its upstream). The first bracket is bounded by
               ``tattn_numba.poly_gradient_bounds(state, c̃Y^T).dQ`` =: b₁. For the second, with
               u = Δc Y^T, |u| <= γ := ω |Y|^T, and dQ'[i,l] = s Σ_j P[i,j](dS[i,j] − δ_i)K1'[j1,l]K2'[j2,l]
               where dS[i,j] − δ_i = Σ_k u[i,k](w_k[j] − O'[i,k]) and O'[i,k] lies in the range of
               w_k = V1'_k ⊘ V2'_k, so |dQ'(u)[i,(b,c)]| <= (1/d)·(Σ_k γ[i,k]·range_k)·max|A2_b|·max|A3_c|
               =: b₂. Hence
               |ΔdX| <= |A1|^T (b₁ + b₂)                        (d×d²).

    For the weight gradients see :func:`poly_weight_grad_bounds`.
    """
    options = _check_options("poly", tol, degree, family, memory_budget)
    A, e, dtype, n, d = _check_data(A1, A2, A3, A4, A5, E)
    x, y = _check_XY(X, Y, dtype, d)
    Op, state = _poly_forward(A, x, y, **options)
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
    W, _ = _check_weights(names, None, d)
    absW = [np.abs(np.asarray(w, dtype=np.float64)) for w in W]
    return WeightGrads(*_chain_rule(certificate.grad_X_bound, certificate.grad_Y_bound, *absW))
